# CloudTrail: every API call in every region (KMS key usage included) to a
# KMS-encrypted S3 bucket with digest files for tamper evidence, and to
# CloudWatch Logs for search and alarms.

resource "aws_cloudwatch_log_group" "cloudtrail" {
  #checkov:skip=CKV_AWS_338:Retention is 7-180 days by design (spec section 7.1); the long-term archive is the KMS-encrypted S3 logs bucket with Glacier lifecycle.
  count = var.enable_cloudtrail ? 1 : 0

  name              = "/aws/cloudtrail/${var.name}"
  retention_in_days = var.cloudtrail_log_retention_days
  kms_key_id        = aws_kms_key.this["logs"].arn
  tags              = var.tags
}

resource "aws_iam_role" "cloudtrail" {
  count = var.enable_cloudtrail ? 1 : 0

  name        = "${var.name}-cloudtrail-logs"
  description = "Lets this trail deliver events to its own CloudWatch log group"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "cloudtrail.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceArn" = local.trail_arn } }
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy" "cloudtrail" {
  count = var.enable_cloudtrail ? 1 : 0

  name = "${var.name}-cloudtrail-logs"
  role = aws_iam_role.cloudtrail[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
      Resource = "${aws_cloudwatch_log_group.cloudtrail[0].arn}:log-stream:*"
    }]
  })
}

resource "aws_cloudtrail" "this" {
  count = var.enable_cloudtrail ? 1 : 0
  #checkov:skip=CKV_AWS_252:Alerting is done from the CloudWatch log group (metric filters/alarms), not per-file SNS notifications.

  name                          = local.trail_name
  s3_bucket_name                = var.cloudtrail_bucket_name
  is_multi_region_trail         = true
  include_global_service_events = true
  enable_log_file_validation    = true
  kms_key_id                    = aws_kms_key.this["cloudtrail"].arn
  cloud_watch_logs_group_arn    = "${aws_cloudwatch_log_group.cloudtrail[0].arn}:*"
  cloud_watch_logs_role_arn     = aws_iam_role.cloudtrail[0].arn

  event_selector {
    read_write_type           = "All"
    include_management_events = true

    dynamic "data_resource" {
      for_each = length(var.cloudtrail_data_event_bucket_arns) > 0 ? [1] : []
      content {
        type   = "AWS::S3::Object"
        values = [for arn in var.cloudtrail_data_event_bucket_arns : "${arn}/"]
      }
    }
  }

  tags       = var.tags
  depends_on = [aws_iam_role_policy.cloudtrail]
}
