output "endpoint" {
  description = "host:port of the primary (the Multi-AZ DNS name follows failovers)."
  value       = aws_db_instance.this.endpoint
}

output "address" {
  description = "Host name of the primary."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "PostgreSQL port."
  value       = aws_db_instance.this.port
}

output "database_name" {
  description = "Airflow metadata database name."
  value       = aws_db_instance.this.db_name
}

output "master_user_secret_arn" {
  description = "Secrets Manager secret (JSON username/password) RDS manages and rotates; Airflow's connection reads it (External Secrets)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "security_group_id" {
  description = "Security group of the database."
  value       = aws_security_group.this.id
}
