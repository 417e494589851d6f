# Platform-wide security: one KMS key per data domain, IRSA roles scoped to
# exactly one service account and to their own buckets, CloudTrail, and IAM
# Access Analyzer.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  trail_name = "${var.name}-trail"
  trail_arn  = "arn:${local.partition}:cloudtrail:${local.region}:${local.account_id}:trail/${local.trail_name}"

  # One key per domain: a leaked grant or a key policy mistake stays inside
  # that domain, and CloudTrail shows which data each decrypt touched.
  kms_keys = {
    s3         = "S3 buckets (datasets, outputs, models, logs, audit)"
    logs       = "CloudWatch log groups"
    eks        = "EKS secrets envelope encryption"
    database   = "RDS PostgreSQL storage, Performance Insights and master secret"
    cache      = "ElastiCache Redis at rest and its auth token secret"
    efs        = "EFS file system for DAGs"
    metrics    = "Amazon Managed Prometheus workspace"
    cloudtrail = "CloudTrail log files"
  }

  # The account root statement hands key administration to IAM policies;
  # without it the key could become unmanageable.
  root_statement = {
    Sid       = "AccountAdministersKeyThroughIAM"
    Effect    = "Allow"
    Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
    Action    = "kms:*"
    Resource  = "*"
  }

  # Services that encrypt with the key themselves (not through a caller's
  # grant) need a statement of their own, scoped to this account's resources.
  service_statements = {
    logs = [{
      Sid       = "CloudWatchLogsEncryptsThisAccountsLogGroups"
      Effect    = "Allow"
      Principal = { Service = "logs.${local.region}.amazonaws.com" }
      Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
      Resource  = "*"
      Condition = {
        ArnLike = {
          "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"
        }
      }
    }]
    cloudtrail = [
      {
        Sid       = "CloudTrailEncryptsThisTrailsLogs"
        Effect    = "Allow"
        Principal = { Service = "cloudtrail.amazonaws.com" }
        Action    = "kms:GenerateDataKey*"
        Resource  = "*"
        Condition = {
          StringEquals = { "aws:SourceArn" = local.trail_arn }
          StringLike = {
            "kms:EncryptionContext:aws:cloudtrail:arn" = "arn:${local.partition}:cloudtrail:*:${local.account_id}:trail/*"
          }
        }
      },
      {
        Sid       = "CloudTrailDescribesKey"
        Effect    = "Allow"
        Principal = { Service = "cloudtrail.amazonaws.com" }
        Action    = "kms:DescribeKey"
        Resource  = "*"
        Condition = { StringEquals = { "aws:SourceArn" = local.trail_arn } }
      },
    ]
  }
}

resource "aws_kms_key" "this" {
  for_each = local.kms_keys

  description             = "${var.name}: ${each.value}"
  enable_key_rotation     = true
  rotation_period_in_days = var.kms_rotation_period_days
  deletion_window_in_days = var.kms_deletion_window_days
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = concat([local.root_statement], lookup(local.service_statements, each.key, []))
  })
  tags = merge(var.tags, { Name = "${var.name}-${each.key}" })
}

resource "aws_kms_alias" "this" {
  for_each = local.kms_keys

  name          = "alias/${var.name}-${each.key}"
  target_key_id = aws_kms_key.this[each.key].key_id
}

resource "aws_accessanalyzer_analyzer" "this" {
  count = var.enable_access_analyzer ? 1 : 0

  analyzer_name = "${var.name}-account"
  type          = "ACCOUNT"
  tags          = var.tags
}
