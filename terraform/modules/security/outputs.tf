output "kms_key_arns" {
  description = "KMS key ARN per domain (s3, logs, eks, database, cache, efs, metrics, cloudtrail)."
  value       = { for k, key in aws_kms_key.this : k => key.arn }
}

output "airflow_role_arns" {
  description = "IRSA role per Airflow component (api-server, scheduler, dag-processor, triggerer, worker): annotate that component's service account with eks.amazonaws.com/role-arn."
  value       = { for component, _ in var.airflow_service_accounts : component => aws_iam_role.irsa["airflow-${component}"].arn if var.create_irsa_roles }
}

output "runner_role_arn" {
  description = "IRSA role for the helical-runner service account; null when not created."
  value       = try(aws_iam_role.irsa["runner"].arn, null)
}

output "metrics_writer_role_arn" {
  description = "IRSA role for the Prometheus agent that remote-writes into AMP; null when not created."
  value       = try(aws_iam_role.irsa["metrics_writer"].arn, null)
}

output "log_shipper_role_arn" {
  description = "IRSA role for Fluent Bit (kube-system/fluent-bit), which writes container logs into the platform's log groups; null when not created."
  value       = try(aws_iam_role.irsa["fluent_bit"].arn, null)
}

output "cloudtrail_arn" {
  description = "ARN of the multi-region trail; null when disabled."
  value       = try(aws_cloudtrail.this[0].arn, null)
}

output "access_analyzer_arn" {
  description = "ARN of the account's IAM Access Analyzer; null when disabled."
  value       = try(aws_accessanalyzer_analyzer.this[0].arn, null)
}
