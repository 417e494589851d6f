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
  description = "VPC of the cache."
  type        = string
}

variable "subnet_ids" {
  description = "Isolated data subnets (one per AZ)."
  type        = list(string)
}

variable "client_security_group_ids" {
  description = "Security groups allowed to connect on 6379: the EKS workloads group (Celery workers, scheduler)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key ARN for data at rest and for the auth-token secret."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "KMS key ARN for the slow-log and engine-log groups."
  type        = string
}

variable "log_retention_days" {
  description = "Days Redis logs stay in CloudWatch Logs (7-180)."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 7 && var.log_retention_days <= 180
    error_message = "log_retention_days must be between 7 and 180."
  }
}

variable "engine_version" {
  description = "Redis OSS engine version."
  type        = string
  default     = "7.1"
}

variable "node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "num_cache_clusters" {
  description = "Nodes in the replication group: 1 primary + replicas. 2 or more turns on Multi-AZ automatic failover."
  type        = number
  default     = 2

  validation {
    condition     = var.num_cache_clusters >= 1 && var.num_cache_clusters <= 6
    error_message = "num_cache_clusters must be between 1 and 6."
  }
}

variable "multi_az" {
  description = "Automatic failover to a replica in another AZ (needs num_cache_clusters >= 2). Keep on outside throwaway stacks."
  type        = bool
  default     = true

  validation {
    condition     = !var.multi_az || var.num_cache_clusters >= 2
    error_message = "multi_az needs num_cache_clusters >= 2 (a primary and at least one replica)."
  }
}

variable "snapshot_retention_days" {
  description = "Days of daily snapshots (Celery broker state survives a full outage)."
  type        = number
  default     = 7
}

variable "auth_token_version" {
  description = "Bump to rotate the Redis auth token: a new random token is written to Secrets Manager and applied with the ROTATE strategy (old and new both valid until clients reload)."
  type        = number
  default     = 1
}

variable "secret_recovery_window_days" {
  description = "Days a deleted auth-token secret can still be restored (7-30)."
  type        = number
  default     = 30
}
