output "amp_workspace_id" {
  description = "ID of the AMP workspace."
  value       = aws_prometheus_workspace.this.id
}

output "amp_workspace_arn" {
  description = "ARN of the AMP workspace (the metrics-writer IRSA role is scoped to it)."
  value       = aws_prometheus_workspace.this.arn
}

output "amp_remote_write_url" {
  description = "Prometheus remote-write URL (SigV4, service aps) for the agent that scrapes the StatsD exporter."
  value       = "${aws_prometheus_workspace.this.prometheus_endpoint}api/v1/remote_write"
}

output "amp_query_url" {
  description = "Prometheus-compatible query URL (Grafana data source)."
  value       = aws_prometheus_workspace.this.prometheus_endpoint
}

output "grafana_endpoint" {
  description = "URL of the Managed Grafana workspace; null when not created."
  value       = try("https://${aws_grafana_workspace.this[0].endpoint}", null)
}

output "log_group_arns" {
  description = "Application log group ARNs by component (the Fluent Bit IRSA role is scoped to them)."
  value       = { for k, g in aws_cloudwatch_log_group.app : k => g.arn }
}

output "log_group_names" {
  description = "Application log group names by component."
  value       = { for k, g in aws_cloudwatch_log_group.app : k => g.name }
}
