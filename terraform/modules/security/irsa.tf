# IRSA: each workload's pods get their own role. A role trusts exactly one
# service account (`:sub`) for the STS audience (`:aud`) through the
# cluster's OIDC provider, and its policy names only that workload's buckets.

locals {
  oidc_host = var.oidc_provider_url == null ? "" : trimprefix(var.oidc_provider_url, "https://")
  # Lets the policies below evaluate when create_irsa_roles is off and no buckets are given.
  buckets = coalesce(var.buckets, { datasets = "", outputs = "", models = "", logs = "" })

  # S3 objects are SSE-KMS encrypted with the s3 key; reading or writing them
  # needs the key, but only when S3 itself calls KMS on the role's behalf.
  use_s3_key = {
    Sid       = "UseBucketKeyThroughS3Only"
    Effect    = "Allow"
    Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
    Resource  = aws_kms_key.this["s3"].arn
    Condition = { StringEquals = { "kms:ViaService" = "s3.${local.region}.amazonaws.com" } }
  }

  # Task logs: every Airflow component reads and writes them (workers and
  # the triggerer write, the API server serves them, the scheduler and DAG
  # processor write their own), and nothing else.
  airflow_logs_policy = jsonencode({ Version = "2012-10-17", Statement = [
    {
      Sid      = "ListLogsBucket"
      Effect   = "Allow"
      Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
      Resource = local.buckets.logs
    },
    {
      Sid      = "ReadWriteTaskLogs"
      Effect   = "Allow"
      Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
      Resource = "${local.buckets.logs}/*"
    },
    local.use_s3_key,
  ] })

  airflow_roles = {
    for component, sa in var.airflow_service_accounts : "airflow-${component}" => {
      service_account = sa
      description     = "Airflow ${component}: read and write task logs in the logs bucket, nothing else"
      policy          = local.airflow_logs_policy
    }
  }

  bucket_roles = { for k, v in merge(local.airflow_roles, {
    runner = {
      service_account = var.runner_service_account
      description     = "helical-runner pods: read datasets and models, write outputs"
      policy = jsonencode({ Version = "2012-10-17", Statement = [
        {
          Sid      = "ListOwnBuckets"
          Effect   = "Allow"
          Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
          Resource = [local.buckets.datasets, local.buckets.models, local.buckets.outputs]
        },
        {
          Sid      = "ReadDatasetsAndModels"
          Effect   = "Allow"
          Action   = ["s3:GetObject"]
          Resource = ["${local.buckets.datasets}/*", "${local.buckets.models}/*"]
        },
        {
          # Get: the runner skips shards whose output is already complete and
          # `merge` reads shard outputs; Delete: work in progress is removed
          # once the final object is written.
          Sid      = "ReadWriteOutputs"
          Effect   = "Allow"
          Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
          Resource = "${local.buckets.outputs}/*"
        },
        local.use_s3_key,
      ] })
    }
  }) : k => v if var.create_irsa_roles }

  metrics_role = { for k, v in {
    metrics_writer = {
      service_account = var.metrics_writer_service_account
      description     = "Prometheus agent: remote-write into the platform's AMP workspace only"
      policy = jsonencode({ Version = "2012-10-17", Statement = [{
        Sid      = "RemoteWriteToWorkspace"
        Effect   = "Allow"
        Action   = ["aps:RemoteWrite"]
        Resource = var.amp_workspace_arn
      }] })
    }
  } : k => v if var.create_metrics_writer_role }

  # Fluent Bit ships container stdout to the platform's log groups: it may
  # add streams and events there and nowhere else (no CreateLogGroup: the
  # groups, their KMS key and retention belong to terraform).
  log_shipper_role = { for k, v in {
    fluent_bit = {
      service_account = var.log_shipper_service_account
      description     = "Fluent Bit: write container logs into the platform's CloudWatch log groups only"
      policy = jsonencode({ Version = "2012-10-17", Statement = [{
        Sid      = "WriteOwnLogGroups"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
        Resource = [for arn in coalesce(var.log_group_arns, []) : "${trimsuffix(arn, ":*")}:*"]
      }] })
    }
  } : k => v if var.create_log_shipper_role }

  irsa_roles = merge(local.bucket_roles, local.metrics_role, local.log_shipper_role)
}

resource "aws_iam_role" "irsa" {
  for_each = local.irsa_roles

  name        = "${var.name}-${replace(each.key, "_", "-")}"
  description = each.value.description
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "OneServiceAccountOnly"
      Effect    = "Allow"
      Principal = { Federated = var.oidc_provider_arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "${local.oidc_host}:sub" = "system:serviceaccount:${each.value.service_account.namespace}:${each.value.service_account.name}"
          "${local.oidc_host}:aud" = "sts.amazonaws.com"
        }
      }
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy" "irsa" {
  for_each = local.irsa_roles

  name   = "${var.name}-${replace(each.key, "_", "-")}"
  role   = aws_iam_role.irsa[each.key].id
  policy = each.value.policy
}
