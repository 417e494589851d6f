variable "name" {
  description = "Name prefix for every resource of this platform (e.g. helical-prod)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "kms_deletion_window_days" {
  description = "Days a scheduled KMS key deletion can still be cancelled (7-30)."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

variable "kms_rotation_period_days" {
  description = "Days between automatic rotations of every KMS key (90-2560)."
  type        = number
  default     = 365

  validation {
    condition     = var.kms_rotation_period_days >= 90 && var.kms_rotation_period_days <= 2560
    error_message = "kms_rotation_period_days must be between 90 and 2560."
  }
}

variable "create_irsa_roles" {
  description = "Create the Airflow (one per component) and helical-runner IRSA roles (needs oidc_provider_arn, oidc_provider_url and buckets)."
  type        = bool
  default     = true

  validation {
    condition     = !var.create_irsa_roles || (var.oidc_provider_arn != null && var.oidc_provider_url != null && var.buckets != null)
    error_message = "create_irsa_roles needs oidc_provider_arn, oidc_provider_url and buckets."
  }
}

variable "create_metrics_writer_role" {
  description = "Create the IRSA role that remote-writes into AMP (needs the OIDC inputs and amp_workspace_arn)."
  type        = bool
  default     = true

  validation {
    condition     = !var.create_metrics_writer_role || (var.oidc_provider_arn != null && var.oidc_provider_url != null && var.amp_workspace_arn != null)
    error_message = "create_metrics_writer_role needs oidc_provider_arn, oidc_provider_url and amp_workspace_arn."
  }
}

variable "create_log_shipper_role" {
  description = "Create the IRSA role Fluent Bit uses to write container logs (needs the OIDC inputs and log_group_arns)."
  type        = bool
  default     = true

  validation {
    condition     = !var.create_log_shipper_role || (var.oidc_provider_arn != null && var.oidc_provider_url != null && length(coalesce(var.log_group_arns, [])) > 0)
    error_message = "create_log_shipper_role needs oidc_provider_arn, oidc_provider_url and log_group_arns."
  }
}

variable "oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider; every IRSA role trusts only it."
  type        = string
  default     = null
}

variable "oidc_provider_url" {
  description = "Issuer URL of that OIDC provider (with or without https://): the prefix of the :sub and :aud condition keys."
  type        = string
  default     = null
}

variable "airflow_service_accounts" {
  description = "Service account of each Airflow component (namespace + name, as the Airflow Helm chart creates them). Each gets its own role, trusted by that one account only, with the same logs-bucket access."
  type = map(object({
    namespace = string
    name      = string
  }))
  default = {
    api-server    = { namespace = "airflow", name = "airflow-api-server" }
    scheduler     = { namespace = "airflow", name = "airflow-scheduler" }
    dag-processor = { namespace = "airflow", name = "airflow-dag-processor" }
    triggerer     = { namespace = "airflow", name = "airflow-triggerer" }
    worker        = { namespace = "airflow", name = "airflow-worker" }
  }
}

variable "runner_service_account" {
  description = "The one Kubernetes service account (namespace + name) that may assume the helical-runner role."
  type = object({
    namespace = string
    name      = string
  })
  default = {
    namespace = "helical"
    name      = "helical-runner"
  }
}

variable "metrics_writer_service_account" {
  description = "The one Kubernetes service account (namespace + name) that may remote-write metrics into AMP."
  type = object({
    namespace = string
    name      = string
  })
  default = {
    namespace = "monitoring"
    name      = "prometheus-agent"
  }
}

variable "log_shipper_service_account" {
  description = "The one Kubernetes service account (namespace + name) that may write container logs into CloudWatch (k8s/logging/fluent-bit.yaml)."
  type = object({
    namespace = string
    name      = string
  })
  default = {
    namespace = "kube-system"
    name      = "fluent-bit"
  }
}

variable "log_group_arns" {
  description = "ARNs of the CloudWatch log groups the log-shipper role may write to (the observability module's application groups)."
  type        = list(string)
  default     = null
}

variable "buckets" {
  description = "ARNs of the platform buckets the IRSA roles are scoped to."
  type = object({
    datasets = string
    outputs  = string
    models   = string
    logs     = string
  })
  default = null
}

variable "amp_workspace_arn" {
  description = "ARN of the AMP workspace the metrics-writer role may remote-write to."
  type        = string
  default     = null
}

variable "enable_cloudtrail" {
  description = "Create the multi-region CloudTrail trail (needs cloudtrail_bucket_name)."
  type        = bool
  default     = true
}

variable "cloudtrail_bucket_name" {
  description = "Name of the S3 bucket CloudTrail writes to (the storage module's audit bucket, whose policy admits CloudTrail)."
  type        = string
  default     = null
}

variable "cloudtrail_log_retention_days" {
  description = "Days CloudTrail events stay searchable in CloudWatch Logs (7-180; the S3 copy is the long-term record)."
  type        = number
  default     = 90

  validation {
    condition     = var.cloudtrail_log_retention_days >= 7 && var.cloudtrail_log_retention_days <= 180
    error_message = "cloudtrail_log_retention_days must be between 7 and 180."
  }
}

variable "cloudtrail_data_event_bucket_arns" {
  description = "Bucket ARNs whose object-level reads and writes CloudTrail records (data events, billed per event)."
  type        = list(string)
  default     = []
}

variable "enable_access_analyzer" {
  description = "Create an account-level IAM Access Analyzer."
  type        = bool
  default     = true
}
