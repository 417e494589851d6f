# RDS PostgreSQL: Multi-AZ, encrypted, private, backed up, protected.

mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name                      = "helical-test"
  vpc_id                    = "vpc-123"
  subnet_ids                = ["subnet-a", "subnet-b", "subnet-c"]
  client_security_group_ids = ["sg-workloads"]
  kms_key_arn               = "arn:aws:kms:eu-west-1:123456789012:key/db"
  logs_kms_key_arn          = "arn:aws:kms:eu-west-1:123456789012:key/logs"
}

run "multi_az_encrypted_private" {
  assert {
    condition     = aws_db_instance.this.multi_az
    error_message = "RDS must be Multi-AZ by default"
  }

  assert {
    condition     = aws_db_instance.this.storage_encrypted && aws_db_instance.this.kms_key_id == var.kms_key_arn
    error_message = "RDS storage must be encrypted with the database key"
  }

  assert {
    condition     = !aws_db_instance.this.publicly_accessible
    error_message = "RDS must not be publicly accessible"
  }

  assert {
    condition     = aws_db_instance.this.backup_retention_period >= 7 && aws_db_instance.this.deletion_protection && !aws_db_instance.this.skip_final_snapshot
    error_message = "backups (PITR) for at least 7 days, deletion protection and a final snapshot are required"
  }

  assert {
    condition     = aws_db_instance.this.manage_master_user_password && aws_db_instance.this.master_user_secret_kms_key_id == var.kms_key_arn && aws_db_instance.this.password == null
    error_message = "the master password must be generated and rotated by RDS in Secrets Manager under the database key"
  }

  assert {
    condition     = aws_db_instance.this.iam_database_authentication_enabled && aws_db_instance.this.performance_insights_kms_key_id == var.kms_key_arn
    error_message = "IAM auth on, Performance Insights encrypted"
  }

  assert {
    condition     = anytrue([for p in aws_db_parameter_group.this.parameter : p.name == "rds.force_ssl" && p.value == "1"])
    error_message = "connections must use TLS"
  }

  assert {
    condition     = [for r in aws_vpc_security_group_ingress_rule.postgres : "${r.from_port}-${r.to_port}/${r.referenced_security_group_id}/${r.cidr_ipv4 == null}"] == ["5432-5432/sg-workloads/true"]
    error_message = "5432 must be open only to the EKS workloads group"
  }
}

run "backups_shorter_than_a_week_are_refused" {
  command = plan

  variables {
    backup_retention_days = 3
  }

  expect_failures = [var.backup_retention_days]
}
