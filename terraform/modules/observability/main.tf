# Metrics and logs: an AMP workspace (the StatsD exporter's metrics arrive by
# remote write) with its own logging, an AMG workspace that can only query
# that workspace, and KMS-encrypted CloudWatch log groups with retention.

data "aws_caller_identity" "current" {}

resource "aws_cloudwatch_log_group" "app" {
  #checkov:skip=CKV_AWS_338:Retention is 7-180 days by design (spec section 7.1); the long-term archive is the KMS-encrypted S3 logs bucket with Glacier lifecycle.
  for_each = toset(var.log_groups)

  name              = "/helical/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "amp" {
  #checkov:skip=CKV_AWS_338:Retention is 7-180 days by design (spec section 7.1); the long-term archive is the KMS-encrypted S3 logs bucket with Glacier lifecycle.
  name              = "/aws/prometheus/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
  tags              = var.tags
}

resource "aws_prometheus_workspace" "this" {
  alias       = var.name
  kms_key_arn = var.metrics_kms_key_arn

  # Rule evaluation and remote-write errors of the workspace itself.
  logging_configuration {
    log_group_arn = "${aws_cloudwatch_log_group.amp.arn}:*"
  }

  tags = var.tags
}

resource "aws_iam_role" "grafana" {
  count = var.create_grafana ? 1 : 0

  name        = "${var.name}-grafana"
  description = "Managed Grafana of ${var.name}: query this AMP workspace, nothing else"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "grafana.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = data.aws_caller_identity.current.account_id } }
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy" "grafana" {
  count = var.create_grafana ? 1 : 0

  name = "${var.name}-grafana-amp-query"
  role = aws_iam_role.grafana[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "QueryThisWorkspaceOnly"
      Effect   = "Allow"
      Action   = ["aps:QueryMetrics", "aps:GetSeries", "aps:GetLabels", "aps:GetMetricMetadata", "aps:DescribeWorkspace"]
      Resource = aws_prometheus_workspace.this.arn
    }]
  })
}

resource "aws_grafana_workspace" "this" {
  count = var.create_grafana ? 1 : 0

  name                     = var.name
  description              = "Dashboards of ${var.name} (Airflow, runner, cluster)"
  account_access_type      = "CURRENT_ACCOUNT"
  authentication_providers = [var.grafana_authentication_provider]
  permission_type          = "CUSTOMER_MANAGED"
  role_arn                 = aws_iam_role.grafana[0].arn
  data_sources             = ["PROMETHEUS"]
  grafana_version          = var.grafana_version
  tags                     = var.tags
}
