# Platform buckets. Every bucket gets the same hardening from one for_each:
# versioning, default encryption (SSE-KMS with a bucket key), ACLs disabled,
# public access blocked, a TLS-only policy, lifecycle rules and server access
# logging into the access-log bucket.

data "aws_caller_identity" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id

  logs_transitions = concat(
    [{ days = var.logs_glacier_after_days, storage_class = "GLACIER" }],
    var.logs_final_action == "DEEP_ARCHIVE" ? [{ days = var.logs_final_after_days, storage_class = "DEEP_ARCHIVE" }] : [],
  )

  # purpose: tag value; transitions/expire_days: the lifecycle of current versions.
  data_buckets = {
    datasets = { purpose = "input .h5ad datasets", transitions = [{ days = var.data_archive_after_days, storage_class = "GLACIER_IR" }], expire_days = null }
    outputs  = { purpose = "embeddings, reports, manifests", transitions = [{ days = var.data_archive_after_days, storage_class = "GLACIER_IR" }], expire_days = null }
    models   = { purpose = "model weights mirror", transitions = [], expire_days = null }
    logs     = { purpose = "Airflow and runner task logs", transitions = local.logs_transitions, expire_days = var.logs_final_action == "EXPIRE" ? var.logs_final_after_days : null }
    audit    = { purpose = "CloudTrail log files", transitions = [{ days = var.audit_archive_after_days, storage_class = "GLACIER" }], expire_days = null }
  }

  buckets = merge(
    { for k, v in local.data_buckets : k => v if k != "audit" || var.create_audit_bucket },
    # S3 delivers server access logs only into buckets encrypted with SSE-S3,
    # so this one bucket cannot use the KMS key (see sse_algorithm below).
    { access-logs = { purpose = "S3 server access logs", transitions = [], expire_days = var.access_log_expire_days } },
  )

  logged_buckets = { for k, v in local.buckets : k => v if k != "access-logs" }
}

resource "aws_s3_bucket" "this" {
  for_each = local.buckets
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost for reproducible data; durability comes from versioning within the region. Add replication per bucket if a DR region is required.
  #checkov:skip=CKV2_AWS_62:No consumer of S3 event notifications yet; the DAG polls and Airflow Assets carry the events.
  #checkov:skip=CKV_AWS_18:Every bucket except access-logs logs into access-logs (aws_s3_bucket_logging below); the log bucket itself cannot log into itself without a loop.
  #checkov:skip=CKV_AWS_145:Every bucket except access-logs uses SSE-KMS; S3 server access logging only supports SSE-S3 target buckets.

  bucket        = "${var.bucket_prefix}-${each.key}"
  force_destroy = var.force_destroy
  tags          = merge(var.tags, { Name = "${var.bucket_prefix}-${each.key}", Purpose = each.value.purpose })
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = local.buckets

  bucket                  = aws_s3_bucket.this[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = each.key == "access-logs" ? "AES256" : "aws:kms"
      kms_master_key_id = each.key == "access-logs" ? null : var.kms_key_arn
    }
    bucket_key_enabled = each.key != "access-logs"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = local.buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    id     = "archive-and-clean-up"
    status = "Enabled"
    filter {
      prefix = "" # every object; spelled out so S3 echoes the rule back as sent
    }

    dynamic "transition" {
      for_each = each.value.transitions
      content {
        days          = transition.value.days
        storage_class = transition.value.storage_class
      }
    }

    dynamic "expiration" {
      for_each = each.value.expire_days == null ? [] : [each.value.expire_days]
      content {
        days = expiration.value
      }
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expire_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_logging" "this" {
  for_each = local.logged_buckets

  bucket        = aws_s3_bucket.this[each.key].id
  target_bucket = aws_s3_bucket.this["access-logs"].id
  target_prefix = "${each.key}/"

  # S3 checks that the target's policy admits log delivery before it accepts.
  depends_on = [aws_s3_bucket_policy.this]
}
