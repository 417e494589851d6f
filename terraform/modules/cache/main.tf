# Celery broker: ElastiCache Redis replication group in the isolated data
# subnets, encrypted at rest (KMS) and in transit (TLS), AUTH token required.
#
# The token is born in Secrets Manager (GetRandomPassword), stored in a
# KMS-encrypted secret, and handed to ElastiCache from there. The data
# source draws a new password on every plan; ignore_changes keeps the stored
# one until auth_token_version is bumped, which replaces the secret version
# and rotates the token (ROTATE strategy: old and new valid during rollout).

resource "aws_secretsmanager_secret" "auth_token" {
  #checkov:skip=CKV2_AWS_57:Rotation is driven by auth_token_version (ElastiCache needs the ROTATE token strategy, which a Secrets Manager rotation Lambda cannot drive without extra infrastructure).
  name                    = "${var.name}/redis/auth-token"
  description             = "AUTH token of the ${var.name} Redis replication group"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = var.tags
}

data "aws_secretsmanager_random_password" "auth_token" {
  password_length = 64
  # Redis AUTH accepts printable ASCII except a few symbols; letters and
  # digits only keeps the token safe in URLs (rediss://:<token>@host) too.
  exclude_punctuation = true
}

resource "terraform_data" "auth_token_version" {
  input = var.auth_token_version
}

resource "aws_secretsmanager_secret_version" "auth_token" {
  secret_id     = aws_secretsmanager_secret.auth_token.id
  secret_string = data.aws_secretsmanager_random_password.auth_token.random_password

  lifecycle {
    ignore_changes       = [secret_string]
    replace_triggered_by = [terraform_data.auth_token_version]
  }
}

resource "aws_elasticache_subnet_group" "this" {
  name        = "${var.name}-redis"
  description = "Isolated data subnets of ${var.name}"
  subnet_ids  = var.subnet_ids
  tags        = var.tags
}

resource "aws_security_group" "this" {
  name        = "${var.name}-redis"
  description = "Redis from EKS workloads only"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-redis" })
}

resource "aws_vpc_security_group_ingress_rule" "redis" {
  # count, not for_each: the group IDs are only known after apply.
  count = length(var.client_security_group_ids)

  security_group_id            = aws_security_group.this.id
  description                  = "Redis from EKS workloads"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = var.client_security_group_ids[count.index]
}

resource "aws_cloudwatch_log_group" "redis" {
  #checkov:skip=CKV_AWS_338:Retention is 7-180 days by design (spec section 7.1); the long-term archive is the KMS-encrypted S3 logs bucket with Glacier lifecycle.
  for_each = toset(["slow-log", "engine-log"])

  name              = "/aws/elasticache/${var.name}-redis/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
  tags              = var.tags
}

resource "aws_elasticache_replication_group" "this" {
  replication_group_id = "${var.name}-redis"
  description          = "Celery broker of ${var.name}"
  engine               = "redis"
  engine_version       = var.engine_version
  node_type            = var.node_type
  port                 = 6379

  num_cache_clusters         = var.num_cache_clusters
  automatic_failover_enabled = var.multi_az
  multi_az_enabled           = var.multi_az

  subnet_group_name  = aws_elasticache_subnet_group.this.name
  security_group_ids = [aws_security_group.this.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = var.kms_key_arn
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  auth_token                 = aws_secretsmanager_secret_version.auth_token.secret_string
  auth_token_update_strategy = "ROTATE"

  snapshot_retention_limit   = var.snapshot_retention_days
  snapshot_window            = "01:00-02:00"
  maintenance_window         = "sun:04:30-sun:05:30"
  auto_minor_version_upgrade = true
  apply_immediately          = false

  dynamic "log_delivery_configuration" {
    for_each = aws_cloudwatch_log_group.redis
    content {
      destination      = log_delivery_configuration.value.name
      destination_type = "cloudwatch-logs"
      log_format       = "json"
      log_type         = log_delivery_configuration.key
    }
  }

  tags = var.tags
}
