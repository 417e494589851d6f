# Bucket policies: every bucket refuses plain-HTTP requests; the audit bucket
# admits CloudTrail and the access-log bucket admits S3 log delivery, both
# only on behalf of this account.

data "aws_partition" "current" {}

locals {
  # Built from the names (not read from the buckets) so that a statement for
  # an optional bucket never refers to a resource that was not created.
  bucket_arns = { for k in keys(local.buckets) : k => "arn:${data.aws_partition.current.partition}:s3:::${var.bucket_prefix}-${k}" }

  extra_statements = {
    audit = [
      {
        Sid       = "CloudTrailChecksBucketAcl"
        Effect    = "Allow"
        Principal = { Service = "cloudtrail.amazonaws.com" }
        Action    = "s3:GetBucketAcl"
        Resource  = local.bucket_arns["audit"]
        Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
      },
      {
        Sid       = "CloudTrailWritesThisAccountsLogs"
        Effect    = "Allow"
        Principal = { Service = "cloudtrail.amazonaws.com" }
        Action    = "s3:PutObject"
        Resource  = "${local.bucket_arns["audit"]}/AWSLogs/${local.account_id}/*"
        Condition = {
          StringEquals = {
            "aws:SourceAccount" = local.account_id
            "s3:x-amz-acl"      = "bucket-owner-full-control"
          }
        }
      },
    ]
    access-logs = [{
      Sid       = "S3DeliversAccessLogsOfOurBuckets"
      Effect    = "Allow"
      Principal = { Service = "logging.s3.amazonaws.com" }
      Action    = "s3:PutObject"
      Resource  = "${local.bucket_arns["access-logs"]}/*"
      Condition = {
        StringEquals = { "aws:SourceAccount" = local.account_id }
        ArnLike      = { "aws:SourceArn" = [for k in keys(local.logged_buckets) : local.bucket_arns[k]] }
      }
    }]
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [{
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = { AWS = "*" } # same as "*"; moto's log-delivery check chokes on a bare string
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.this[each.key].arn, "${aws_s3_bucket.this[each.key].arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      }],
      lookup(local.extra_statements, each.key, []),
    )
  })

  # A policy put before the public access block could be judged public.
  depends_on = [aws_s3_bucket_public_access_block.this]
}
