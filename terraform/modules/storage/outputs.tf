output "bucket_names" {
  description = "Bucket name per role (datasets, outputs, models, logs, audit, access-logs)."
  value       = { for k, b in aws_s3_bucket.this : k => b.bucket }
}

output "bucket_arns" {
  description = "Bucket ARN per role; feed datasets/outputs/models/logs to the security module's IRSA roles."
  value       = { for k, b in aws_s3_bucket.this : k => b.arn }
}

output "audit_bucket_name" {
  description = "Bucket CloudTrail writes to; null when create_audit_bucket is false."
  value       = try(aws_s3_bucket.this["audit"].bucket, null)
}

output "efs_file_system_id" {
  description = "EFS file system for DAGs; null when create_efs is false."
  value       = try(aws_efs_file_system.dags[0].id, null)
}

output "efs_access_point_id" {
  description = "EFS access point the Airflow DAG volume must mount (the file system policy refuses other mounts)."
  value       = try(aws_efs_access_point.dags[0].id, null)
}
