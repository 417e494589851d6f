variable "name" {
  description = "Name prefix for every resource of this platform (e.g. helical-prod)."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC of the database."
  type        = string
}

variable "subnet_ids" {
  description = "Isolated data subnets in at least two AZs (Multi-AZ standby lives in another AZ)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "RDS needs subnets in at least two AZs."
  }
}

variable "client_security_group_ids" {
  description = "Security groups allowed to connect on 5432: the EKS workloads group (Airflow, PgBouncer)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key ARN for storage, Performance Insights and the Secrets Manager master secret."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "KMS key ARN for the exported PostgreSQL log groups."
  type        = string
}

variable "log_retention_days" {
  description = "Days exported PostgreSQL logs stay in CloudWatch Logs (7-180)."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 7 && var.log_retention_days <= 180
    error_message = "log_retention_days must be between 7 and 180."
  }
}

variable "engine_version" {
  description = "PostgreSQL major version (minor versions follow AWS's auto minor upgrades)."
  type        = string
  default     = "16"
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"
}

variable "allocated_storage_gib" {
  description = "Initial gp3 storage in GiB."
  type        = number
  default     = 50
}

variable "max_allocated_storage_gib" {
  description = "Upper bound for storage autoscaling in GiB."
  type        = number
  default     = 200
}

variable "multi_az" {
  description = "Synchronous standby in another AZ with automatic failover. Keep on outside throwaway stacks."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Days of automated backups; point-in-time restore reaches back this far (7-35)."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 7 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 7 and 35."
  }
}

variable "deletion_protection" {
  description = "Refuse to delete the instance until this is turned off explicitly."
  type        = bool
  default     = true
}

variable "database_name" {
  description = "Database created for the Airflow metadata."
  type        = string
  default     = "airflow"
}

variable "master_username" {
  description = "Master user name; its password is generated and rotated by RDS in Secrets Manager."
  type        = string
  default     = "airflow_admin"
}
