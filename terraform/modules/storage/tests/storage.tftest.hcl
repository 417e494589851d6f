# Security properties of every bucket, checked on a mocked apply (no AWS).

mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name          = "helical-test"
  bucket_prefix = "acme-helical-test"
  kms_key_arn   = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
}

run "every_bucket_is_hardened" {
  assert {
    condition     = toset(keys(aws_s3_bucket.this)) == toset(["datasets", "outputs", "models", "logs", "audit", "access-logs"])
    error_message = "expected the six platform buckets"
  }

  assert {
    condition     = alltrue([for k, _ in aws_s3_bucket.this : aws_s3_bucket_versioning.this[k].versioning_configuration[0].status == "Enabled"])
    error_message = "every bucket must be versioned"
  }

  assert {
    condition = alltrue([for k, b in aws_s3_bucket_public_access_block.this :
    b.block_public_acls && b.block_public_policy && b.ignore_public_acls && b.restrict_public_buckets])
    error_message = "every bucket must block all public access"
  }

  assert {
    condition     = length(aws_s3_bucket_public_access_block.this) == length(aws_s3_bucket.this)
    error_message = "a bucket has no public access block"
  }

  assert {
    condition     = alltrue([for k, _ in aws_s3_bucket.this : aws_s3_bucket_ownership_controls.this[k].rule[0].object_ownership == "BucketOwnerEnforced"])
    error_message = "ACLs must be disabled on every bucket"
  }

  assert {
    condition = alltrue([for k, c in aws_s3_bucket_server_side_encryption_configuration.this :
      k == "access-logs" ? true : (
        one(c.rule).apply_server_side_encryption_by_default[0].sse_algorithm == "aws:kms" &&
        one(c.rule).apply_server_side_encryption_by_default[0].kms_master_key_id == var.kms_key_arn &&
        one(c.rule).bucket_key_enabled
    )])
    error_message = "every data bucket must use SSE-KMS with the platform key and a bucket key"
  }

  assert {
    condition     = one(aws_s3_bucket_server_side_encryption_configuration.this["access-logs"].rule).apply_server_side_encryption_by_default[0].sse_algorithm == "AES256"
    error_message = "the access-log bucket must use SSE-S3 (the only encryption S3 log delivery supports)"
  }

  assert {
    condition = alltrue([for k, p in aws_s3_bucket_policy.this : anytrue([
      # HCL's && does not short-circuit: the conditional guards the lookups.
      for s in jsondecode(p.policy).Statement : s.Effect != "Deny" ? false : (
        s.Principal == { AWS = "*" } && s.Action == "s3:*" &&
        s.Condition.Bool["aws:SecureTransport"] == "false" &&
        contains(s.Resource, aws_s3_bucket.this[k].arn) && contains(s.Resource, "${aws_s3_bucket.this[k].arn}/*")
      )
    ])])
    error_message = "every bucket policy must deny requests without TLS on the bucket and its objects"
  }

  assert {
    condition     = length(aws_s3_bucket_policy.this) == length(aws_s3_bucket.this)
    error_message = "a bucket has no policy"
  }

  assert {
    condition = alltrue([for k, p in aws_s3_bucket_policy.this : alltrue([
      for s in jsondecode(p.policy).Statement : s.Effect == "Deny" ? true : (s.Principal != "*" && s.Principal != { AWS = "*" })
    ])])
    error_message = "no bucket policy may allow anonymous principals"
  }

  assert {
    condition = alltrue([for k, _ in aws_s3_bucket.this :
    k == "access-logs" ? true : aws_s3_bucket_logging.this[k].target_bucket == aws_s3_bucket.this["access-logs"].id])
    error_message = "every bucket except the access-log bucket must log into it"
  }
}

run "logs_lifecycle_glacier_then_deep_archive" {
  assert {
    condition = [for t in one(aws_s3_bucket_lifecycle_configuration.this["logs"].rule).transition : [t.days, t.storage_class]] == [
    [60, "GLACIER"], [90, "DEEP_ARCHIVE"]]
    error_message = "logs must go to Glacier after 60 days and Deep Archive after 90"
  }

  assert {
    condition     = length(one(aws_s3_bucket_lifecycle_configuration.this["logs"].rule).expiration) == 0
    error_message = "logs must not expire when the final action is DEEP_ARCHIVE"
  }

  assert {
    condition     = alltrue([for k, l in aws_s3_bucket_lifecycle_configuration.this : one(l.rule).noncurrent_version_expiration[0].noncurrent_days == 90])
    error_message = "every bucket must expire old versions"
  }
}

run "logs_can_expire_instead" {
  variables {
    logs_final_action = "EXPIRE"
  }

  assert {
    condition     = one(one(aws_s3_bucket_lifecycle_configuration.this["logs"].rule).expiration).days == 90
    error_message = "logs must expire after 90 days when asked"
  }

  assert {
    condition     = [for t in one(aws_s3_bucket_lifecycle_configuration.this["logs"].rule).transition : t.storage_class] == ["GLACIER"]
    error_message = "expiring logs still pass through Glacier first"
  }
}

run "log_final_step_must_follow_glacier" {
  command = plan

  variables {
    logs_glacier_after_days = 90
    logs_final_after_days   = 60
  }

  expect_failures = [var.logs_final_after_days]
}

run "audit_bucket_admits_cloudtrail_of_this_account_only" {
  assert {
    condition = alltrue([for s in jsondecode(aws_s3_bucket_policy.this["audit"].policy).Statement :
    s.Effect == "Deny" ? true : (s.Principal == { Service = "cloudtrail.amazonaws.com" } && s.Condition.StringEquals["aws:SourceAccount"] == "123456789012")])
    error_message = "the audit bucket may admit only CloudTrail, for this account"
  }
}

run "efs_is_encrypted_and_tls_only" {
  variables {
    create_efs                    = true
    efs_kms_key_arn               = "arn:aws:kms:eu-west-1:123456789012:key/efs"
    vpc_id                        = "vpc-123"
    efs_subnet_ids                = ["subnet-a", "subnet-b", "subnet-c"]
    efs_client_security_group_ids = ["sg-workloads"]
  }

  assert {
    condition     = aws_efs_file_system.dags[0].encrypted && aws_efs_file_system.dags[0].kms_key_id == var.efs_kms_key_arn
    error_message = "EFS must be encrypted with the given KMS key"
  }

  assert {
    condition     = length(aws_efs_mount_target.dags) == 3
    error_message = "one mount target per private subnet"
  }

  assert {
    condition     = [for r in aws_vpc_security_group_ingress_rule.efs : "${r.from_port}/${r.referenced_security_group_id}/${r.cidr_ipv4 == null}"] == ["2049/sg-workloads/true"]
    error_message = "NFS must be open only to the workloads security group"
  }

  assert {
    condition = anytrue([for s in jsondecode(aws_efs_file_system_policy.dags[0].policy).Statement :
    s.Effect == "Deny" ? s.Condition.Bool["aws:SecureTransport"] == "false" : false])
    error_message = "EFS must refuse mounts without TLS"
  }
}
