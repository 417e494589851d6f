output "primary_endpoint" {
  description = "Primary endpoint (TLS, port 6379): rediss://:<token>@<this>:6379/0 for Celery."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "reader_endpoint" {
  description = "Reader endpoint over the replicas."
  value       = aws_elasticache_replication_group.this.reader_endpoint_address
}

output "port" {
  description = "Redis port."
  value       = aws_elasticache_replication_group.this.port
}

output "auth_token_secret_arn" {
  description = "Secrets Manager secret that holds the AUTH token (plain string)."
  value       = aws_secretsmanager_secret.auth_token.arn
}

output "security_group_id" {
  description = "Security group of the cache."
  value       = aws_security_group.this.id
}
