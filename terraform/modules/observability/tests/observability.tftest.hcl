# AMP with logging and KMS, AMG that may only query it, log groups with
# bounded retention and KMS.

mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name                = "helical-test"
  metrics_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/metrics"
  logs_kms_key_arn    = "arn:aws:kms:eu-west-1:123456789012:key/logs"
}

run "amp_amg_and_log_groups" {
  assert {
    condition     = aws_prometheus_workspace.this.kms_key_arn == var.metrics_kms_key_arn && length(aws_prometheus_workspace.this.logging_configuration) == 1
    error_message = "AMP must be KMS-encrypted with logging on"
  }

  assert {
    condition     = output.amp_remote_write_url == "https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-mock/api/v1/remote_write"
    error_message = "the remote-write URL must be the workspace endpoint + api/v1/remote_write"
  }

  assert {
    condition     = aws_grafana_workspace.this[0].data_sources == tolist(["PROMETHEUS"]) && aws_grafana_workspace.this[0].authentication_providers == tolist(["AWS_SSO"])
    error_message = "Grafana must sign in through IAM Identity Center and read Prometheus"
  }

  assert {
    condition = alltrue([for s in jsondecode(aws_iam_role_policy.grafana[0].policy).Statement :
    s.Resource == aws_prometheus_workspace.this.arn && alltrue([for a in s.Action : startswith(a, "aps:") && !strcontains(a, "Write")])])
    error_message = "Grafana's role may only query this AMP workspace"
  }

  assert {
    condition     = alltrue([for g in concat(values(aws_cloudwatch_log_group.app), [aws_cloudwatch_log_group.amp]) : g.kms_key_id == var.logs_kms_key_arn && g.retention_in_days == 30])
    error_message = "every log group must be KMS-encrypted with the configured retention"
  }
}

run "retention_is_bounded" {
  command = plan

  variables {
    log_retention_days = 3
  }

  expect_failures = [var.log_retention_days]
}

run "grafana_auth_is_sso_or_saml" {
  command = plan

  variables {
    grafana_authentication_provider = "NONE"
  }

  expect_failures = [var.grafana_authentication_provider]
}
