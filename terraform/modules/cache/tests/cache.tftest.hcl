# ElastiCache Redis: encrypted at rest and in transit, token in Secrets
# Manager, reachable only from EKS workloads.

mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name                      = "helical-test"
  vpc_id                    = "vpc-123"
  subnet_ids                = ["subnet-a", "subnet-b", "subnet-c"]
  client_security_group_ids = ["sg-workloads"]
  kms_key_arn               = "arn:aws:kms:eu-west-1:123456789012:key/cache"
  logs_kms_key_arn          = "arn:aws:kms:eu-west-1:123456789012:key/logs"
}

run "encrypted_authenticated_private" {
  assert {
    condition     = aws_elasticache_replication_group.this.at_rest_encryption_enabled == "true" && aws_elasticache_replication_group.this.kms_key_id == var.kms_key_arn
    error_message = "Redis must be encrypted at rest with the cache key"
  }

  assert {
    condition     = aws_elasticache_replication_group.this.transit_encryption_enabled && aws_elasticache_replication_group.this.transit_encryption_mode == "required"
    error_message = "Redis must require TLS"
  }

  assert {
    condition     = aws_elasticache_replication_group.this.auth_token == aws_secretsmanager_secret_version.auth_token.secret_string && length(aws_elasticache_replication_group.this.auth_token) > 0
    error_message = "the AUTH token must come from the Secrets Manager secret"
  }

  assert {
    condition     = aws_secretsmanager_secret.auth_token.kms_key_id == var.kms_key_arn && aws_secretsmanager_secret_version.auth_token.secret_id == aws_secretsmanager_secret.auth_token.id
    error_message = "the token must live in a KMS-encrypted secret"
  }

  assert {
    condition     = aws_elasticache_replication_group.this.multi_az_enabled && aws_elasticache_replication_group.this.automatic_failover_enabled
    error_message = "Redis must fail over across AZs by default"
  }

  assert {
    condition     = [for r in aws_vpc_security_group_ingress_rule.redis : "${r.from_port}-${r.to_port}/${r.referenced_security_group_id}/${r.cidr_ipv4 == null}"] == ["6379-6379/sg-workloads/true"]
    error_message = "6379 must be open only to the EKS workloads group"
  }
}

run "multi_az_needs_a_replica" {
  command = plan

  variables {
    num_cache_clusters = 1
  }

  expect_failures = [var.multi_az]
}
