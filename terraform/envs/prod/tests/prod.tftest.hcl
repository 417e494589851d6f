# The prod composition applies end to end on a mocked provider: no
# dependency cycle between modules, and every output a platform engineer
# needs is filled in.

mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  bucket_prefix = "acme-helical-prod"
}

run "platform_outputs" {
  assert {
    condition     = alltrue([for k, v in output.platform.irsa_role_arns : startswith(v, "arn:aws:iam::")])
    error_message = "every IRSA role ARN must be output"
  }

  assert {
    condition     = toset(keys(output.platform.bucket_names)) == toset(["datasets", "outputs", "models", "logs", "audit", "access-logs"])
    error_message = "every bucket name must be output"
  }

  assert {
    condition     = endswith(output.platform.amp_remote_write_url, "/api/v1/remote_write")
    error_message = "the AMP remote-write URL must be output"
  }

  assert {
    condition     = output.platform.cluster_name == "helical-prod" && output.platform.database_secret_arn != null && output.platform.redis_auth_token_secret_arn != null
    error_message = "cluster name and secret ARNs must be output"
  }
}

run "prod_is_highly_available" {
  command = plan

  assert {
    condition     = module.platform.efs_access_point_id == null ? false : true
    error_message = "prod keeps DAGs on EFS"
  }
}
