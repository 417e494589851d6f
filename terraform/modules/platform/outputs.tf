output "cluster_name" {
  description = "EKS cluster name: aws eks update-kubeconfig --name <this>."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint (private by default)."
  value       = module.eks.cluster_endpoint
}

output "vpc_id" {
  description = "VPC of the platform."
  value       = module.network.vpc_id
}

output "bucket_names" {
  description = "S3 bucket per role: datasets, outputs, models, logs (s3://<logs>/<dag>/<task>/<run_id>/), audit, access-logs."
  value       = module.storage.bucket_names
}

output "irsa_role_arns" {
  description = "IRSA role ARNs to annotate service accounts with (eks.amazonaws.com/role-arn): airflow-<component>, runner, metrics_writer, fluent_bit, cluster_autoscaler."
  value = merge(
    { for component, arn in module.security.airflow_role_arns : "airflow-${component}" => arn },
    {
      runner             = module.security.runner_role_arn
      metrics_writer     = module.security.metrics_writer_role_arn
      fluent_bit         = module.security.log_shipper_role_arn
      cluster_autoscaler = module.eks.cluster_autoscaler_role_arn
    },
  )
}

output "database_endpoint" {
  description = "RDS PostgreSQL host:port for the Airflow metadata connection."
  value       = module.database.endpoint
}

output "database_secret_arn" {
  description = "Secrets Manager secret with the RDS master credentials (rotated by RDS)."
  value       = module.database.master_user_secret_arn
}

output "redis_endpoint" {
  description = "ElastiCache primary endpoint (TLS) for the Celery broker."
  value       = module.cache.primary_endpoint
}

output "redis_auth_token_secret_arn" {
  description = "Secrets Manager secret with the Redis AUTH token."
  value       = module.cache.auth_token_secret_arn
}

output "amp_remote_write_url" {
  description = "AMP remote-write URL for the Prometheus agent (SigV4, region of the stack)."
  value       = module.observability.amp_remote_write_url
}

output "grafana_endpoint" {
  description = "Managed Grafana URL (null when not created)."
  value       = module.observability.grafana_endpoint
}

output "kms_key_arns" {
  description = "KMS key per domain."
  value       = module.security.kms_key_arns
}

output "efs_access_point_id" {
  description = "EFS access point for the DAG volume (null without EFS)."
  value       = module.storage.efs_access_point_id
}
