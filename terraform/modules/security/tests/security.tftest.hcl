# KMS keys rotate; IRSA roles trust exactly one service account and name
# only their own buckets; CloudTrail covers all regions with validation.

mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name              = "helical-test"
  oidc_provider_arn = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC"
  oidc_provider_url = "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC"
  amp_workspace_arn = "arn:aws:aps:eu-west-1:123456789012:workspace/ws-1"
  log_group_arns = [
    "arn:aws:logs:eu-west-1:123456789012:log-group:/helical/helical-test/runner",
    "arn:aws:logs:eu-west-1:123456789012:log-group:/helical/helical-test/airflow/worker:*",
  ]
  cloudtrail_bucket_name = "acme-helical-test-audit"
  buckets = {
    datasets = "arn:aws:s3:::acme-datasets"
    outputs  = "arn:aws:s3:::acme-outputs"
    models   = "arn:aws:s3:::acme-models"
    logs     = "arn:aws:s3:::acme-logs"
  }
}

run "every_kms_key_rotates" {
  assert {
    condition     = length(aws_kms_key.this) == 8 && alltrue([for k in aws_kms_key.this : k.enable_key_rotation && k.rotation_period_in_days == 365])
    error_message = "every KMS key must rotate automatically"
  }

  assert {
    condition     = alltrue([for k in aws_kms_key.this : k.deletion_window_in_days == 30])
    error_message = "key deletion must keep the 30-day safety window by default"
  }

  assert {
    condition = alltrue([for k in aws_kms_key.this : alltrue([
      for s in jsondecode(k.policy).Statement : s.Principal != "*" && s.Principal != { AWS = "*" }
    ])])
    error_message = "no key policy may name a wildcard principal"
  }

  assert {
    condition = alltrue([for s in jsondecode(aws_kms_key.this["logs"].policy).Statement :
    s.Sid == "AccountAdministersKeyThroughIAM" ? true : s.Condition.ArnLike["kms:EncryptionContext:aws:logs:arn"] == "arn:aws:logs:eu-west-1:123456789012:log-group:*"])
    error_message = "CloudWatch Logs may use the logs key only for this account's log groups"
  }
}

run "irsa_roles_trust_exactly_one_service_account" {
  assert {
    condition = toset(keys(aws_iam_role.irsa)) == toset([
      "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
      "runner", "metrics_writer", "fluent_bit",
    ])
    error_message = "expected one IRSA role per Airflow component, plus runner, metrics_writer and fluent_bit"
  }

  assert {
    condition = alltrue([for k, r in aws_iam_role.irsa : length(jsondecode(r.assume_role_policy).Statement) == 1 && alltrue([
      for s in jsondecode(r.assume_role_policy).Statement :
      s.Principal == { Federated = var.oidc_provider_arn } && s.Action == "sts:AssumeRoleWithWebIdentity" &&
      keys(s.Condition) == ["StringEquals"] &&
      s.Condition.StringEquals["oidc.eks.eu-west-1.amazonaws.com/id/ABC:aud"] == "sts.amazonaws.com"
    ])])
    error_message = "each IRSA role must have one statement trusting only the cluster's OIDC provider for the STS audience"
  }

  assert {
    condition = [for k in ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "runner", "metrics_writer", "fluent_bit"] :
      jsondecode(aws_iam_role.irsa[k].assume_role_policy).Statement[0].Condition.StringEquals["oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub"]
      ] == [
      "system:serviceaccount:airflow:airflow-api-server",
      "system:serviceaccount:airflow:airflow-scheduler",
      "system:serviceaccount:airflow:airflow-dag-processor",
      "system:serviceaccount:airflow:airflow-triggerer",
      "system:serviceaccount:airflow:airflow-worker",
      "system:serviceaccount:helical:helical-runner",
      "system:serviceaccount:monitoring:prometheus-agent",
      "system:serviceaccount:kube-system:fluent-bit",
    ]
    error_message = "each IRSA role must trust exactly its own service account (no wildcards)"
  }
}

run "irsa_policies_name_only_their_own_buckets" {
  assert {
    condition = alltrue([for k, p in aws_iam_role_policy.irsa : !startswith(k, "airflow-") ? true :
      toset(flatten([for s in jsondecode(p.policy).Statement :
        s.Resource if startswith(jsonencode(s.Action), "[\"s3:")
      ])) == toset(["arn:aws:s3:::acme-logs", "arn:aws:s3:::acme-logs/*"])
    ])
    error_message = "the Airflow roles may touch only the logs bucket"
  }

  assert {
    condition = toset(flatten([for s in jsondecode(aws_iam_role_policy.irsa["runner"].policy).Statement :
      s.Resource if startswith(jsonencode(s.Action), "[\"s3:")
      ])) == toset([
      "arn:aws:s3:::acme-datasets", "arn:aws:s3:::acme-models", "arn:aws:s3:::acme-outputs",
      "arn:aws:s3:::acme-datasets/*", "arn:aws:s3:::acme-models/*", "arn:aws:s3:::acme-outputs/*",
    ])
    error_message = "the runner role may touch only the datasets, models and outputs buckets"
  }

  assert {
    condition = alltrue([for s in jsondecode(aws_iam_role_policy.irsa["runner"].policy).Statement :
      !contains(s.Action, "s3:PutObject") && !contains(s.Action, "s3:DeleteObject") ? true :
      s.Resource == "arn:aws:s3:::acme-outputs/*"
    ])
    error_message = "the runner may write and delete only in the outputs bucket"
  }

  assert {
    condition = jsondecode(aws_iam_role_policy.irsa["fluent_bit"].policy).Statement == [{
      Sid      = "WriteOwnLogGroups"
      Effect   = "Allow"
      Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
      Resource = ["arn:aws:logs:eu-west-1:123456789012:log-group:/helical/helical-test/runner:*", "arn:aws:logs:eu-west-1:123456789012:log-group:/helical/helical-test/airflow/worker:*"]
    }]
    error_message = "Fluent Bit may only add streams and events to the platform's own log groups (no CreateLogGroup, no S3)"
  }

  assert {
    condition = alltrue(flatten([for k, p in aws_iam_role_policy.irsa : [
      for s in jsondecode(p.policy).Statement : s.Effect == "Allow" && !contains(flatten([s.Action]), "*") && !contains(flatten([s.Action]), "s3:*") && s.Resource != "*"
    ]]))
    error_message = "no IRSA statement may use a wildcard action or resource"
  }

  assert {
    condition = alltrue(flatten([for k, p in aws_iam_role_policy.irsa : [
      for s in jsondecode(p.policy).Statement : s.Sid != "UseBucketKeyThroughS3Only" ? true :
      s.Condition.StringEquals["kms:ViaService"] == "s3.eu-west-1.amazonaws.com"
    ]]))
    error_message = "IRSA roles may use the S3 key only through S3"
  }
}

run "cloudtrail_is_multi_region_validated_and_encrypted" {
  assert {
    condition = (aws_cloudtrail.this[0].is_multi_region_trail && aws_cloudtrail.this[0].enable_log_file_validation &&
    aws_cloudtrail.this[0].include_global_service_events && aws_cloudtrail.this[0].kms_key_id == aws_kms_key.this["cloudtrail"].arn)
    error_message = "the trail must be multi-region, validated, include global events and use the CloudTrail key"
  }

  assert {
    condition     = aws_accessanalyzer_analyzer.this[0].type == "ACCOUNT"
    error_message = "an account Access Analyzer must exist"
  }
}

run "irsa_roles_need_their_inputs" {
  command = plan

  variables {
    oidc_provider_arn = null
  }

  expect_failures = [var.create_irsa_roles, var.create_metrics_writer_role, var.create_log_shipper_role]
}
