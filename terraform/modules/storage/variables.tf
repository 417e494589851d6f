variable "name" {
  description = "Name prefix for every resource of this platform (e.g. helical-prod)."
  type        = string
}

variable "bucket_prefix" {
  description = "Globally unique prefix of the bucket names: buckets are <prefix>-datasets, -outputs, -models, -logs, -audit, -access-logs."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$", var.bucket_prefix))
    error_message = "bucket_prefix must be 3-50 lowercase letters, digits or dashes (S3 naming rules, room for the suffix)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "kms_key_arn" {
  description = "KMS key ARN for SSE-KMS on every data bucket (S3 Bucket Keys on, so KMS calls stay cheap)."
  type        = string
}

variable "force_destroy" {
  description = "Allow destroying buckets that still hold objects. Keep false outside throwaway test stacks."
  type        = bool
  default     = false
}

variable "create_audit_bucket" {
  description = "Create the bucket CloudTrail writes to (its policy admits CloudTrail for this account only)."
  type        = bool
  default     = true
}

variable "data_archive_after_days" {
  description = "Days after which dataset and output objects move to S3 Glacier Instant Retrieval (still readable in milliseconds)."
  type        = number
  default     = 90

  validation {
    condition     = var.data_archive_after_days >= 30
    error_message = "data_archive_after_days must be at least 30 (the minimum before a Glacier IR transition pays off)."
  }
}

variable "logs_glacier_after_days" {
  description = "Days after which task logs move to S3 Glacier Flexible Retrieval."
  type        = number
  default     = 60

  validation {
    condition     = var.logs_glacier_after_days >= 1
    error_message = "logs_glacier_after_days must be at least 1."
  }
}

variable "logs_final_after_days" {
  description = "Days after which task logs reach their final state (see logs_final_action)."
  type        = number
  default     = 90

  validation {
    condition     = var.logs_final_after_days > var.logs_glacier_after_days
    error_message = "logs_final_after_days must be later than logs_glacier_after_days."
  }
}

variable "logs_final_action" {
  description = "What happens to task logs after logs_final_after_days: DEEP_ARCHIVE (move to Glacier Deep Archive) or EXPIRE (delete)."
  type        = string
  default     = "DEEP_ARCHIVE"

  validation {
    condition     = contains(["DEEP_ARCHIVE", "EXPIRE"], var.logs_final_action)
    error_message = "logs_final_action must be DEEP_ARCHIVE or EXPIRE."
  }
}

variable "audit_archive_after_days" {
  description = "Days after which CloudTrail log files move to S3 Glacier Flexible Retrieval."
  type        = number
  default     = 90
}

variable "noncurrent_version_expire_days" {
  description = "Days an overwritten or deleted object version is kept before it is removed (the undo window)."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_expire_days >= 7
    error_message = "noncurrent_version_expire_days must be at least 7."
  }
}

variable "access_log_expire_days" {
  description = "Days S3 server access logs are kept."
  type        = number
  default     = 365
}

variable "create_efs" {
  description = "Create an encrypted EFS file system with an access point for the Airflow DAG folder."
  type        = bool
  default     = false
}

variable "efs_kms_key_arn" {
  description = "KMS key ARN for the EFS file system (needed when create_efs)."
  type        = string
  default     = null
}

variable "vpc_id" {
  description = "VPC of the EFS mount targets (needed when create_efs)."
  type        = string
  default     = null
}

variable "efs_subnet_ids" {
  description = "Private subnets that get one EFS mount target each (needed when create_efs)."
  type        = list(string)
  default     = []
}

variable "efs_client_security_group_ids" {
  description = "Security groups allowed to mount EFS (NFS, TCP 2049): the EKS workload security group."
  type        = list(string)
  default     = []
}

variable "efs_posix_uid" {
  description = "POSIX uid/gid the DAG access point maps every client to (50000 = the Airflow image's user)."
  type        = number
  default     = 50000
}
