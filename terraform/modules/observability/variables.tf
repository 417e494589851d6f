variable "name" {
  description = "Name prefix for every resource of this platform (e.g. helical-prod)."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "metrics_kms_key_arn" {
  description = "KMS key ARN that encrypts the AMP workspace."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "KMS key ARN for every log group this module creates."
  type        = string
}

variable "log_retention_days" {
  description = "Days application logs (Airflow components, runner jobs, AMP) stay in CloudWatch Logs (7-180; S3 keeps the archive)."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 7 && var.log_retention_days <= 180
    error_message = "log_retention_days must be between 7 and 180."
  }
}

variable "log_groups" {
  description = "Application log groups created as /helical/<name>/<entry> (Fluent Bit ships each component's stdout there)."
  type        = list(string)
  # airflow/unlabelled: where k8s/logging/fluent-bit.yaml sends Airflow pods without a component label.
  default = ["airflow/api-server", "airflow/scheduler", "airflow/dag-processor", "airflow/triggerer", "airflow/worker", "airflow/unlabelled", "runner"]
}

variable "create_grafana" {
  description = "Create the Amazon Managed Grafana workspace (needs IAM Identity Center or a SAML IdP in the account)."
  type        = bool
  default     = true
}

variable "grafana_authentication_provider" {
  description = "How people sign in to Grafana: AWS_SSO (IAM Identity Center) or SAML."
  type        = string
  default     = "AWS_SSO"

  validation {
    condition     = contains(["AWS_SSO", "SAML"], var.grafana_authentication_provider)
    error_message = "grafana_authentication_provider must be AWS_SSO or SAML."
  }
}

variable "grafana_version" {
  description = "Grafana major version of the workspace."
  type        = string
  default     = "10.4"
}
