variable "name" {
  description = "Platform name: prefix of every resource and the EKS cluster name (e.g. helical-prod)."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource (the providers' default_tags add more)."
  type        = map(string)
  default     = {}
}

variable "bucket_prefix" {
  description = "Globally unique prefix of the S3 bucket names (e.g. <org>-helical-prod)."
  type        = string
}

variable "az_count" {
  description = "Availability zones to spread the platform over."
  type        = number
  default     = 3
}

variable "vpc_cidr" {
  description = "IPv4 range of the VPC (/16 or larger)."
  type        = string
  default     = "10.40.0.0/16"
}

variable "single_nat_gateway" {
  description = "One shared NAT gateway (dev) instead of one per AZ (prod)."
  type        = bool
  default     = false
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "eks_public_access_cidrs" {
  description = "Empty keeps the Kubernetes API private; otherwise the ranges allowed on a public API endpoint."
  type        = list(string)
  default     = []
}

variable "node_groups" {
  description = "EKS managed node groups (see the eks module); null keeps that module's system/cpu/gpu defaults."
  type        = any
  default     = null
}

variable "log_retention_days" {
  description = "Days every CloudWatch log group of the platform keeps logs (7-180)."
  type        = number
  default     = 30
}

variable "db_instance_class" {
  description = "RDS instance class of the Airflow metadata database."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_multi_az" {
  description = "RDS Multi-AZ standby."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of RDS automated backups / point-in-time restore (7-35)."
  type        = number
  default     = 14
}

variable "cache_node_type" {
  description = "ElastiCache node type of the Celery broker."
  type        = string
  default     = "cache.t4g.small"
}

variable "cache_num_nodes" {
  description = "Redis nodes (primary + replicas); 2 or more enables Multi-AZ failover."
  type        = number
  default     = 2
}

variable "deletion_protection" {
  description = "Protect the database from deletion."
  type        = bool
  default     = true
}

variable "create_efs" {
  description = "Create the encrypted EFS file system for DAGs (else DAGs come through git-sync)."
  type        = bool
  default     = false
}

variable "create_grafana" {
  description = "Create the Managed Grafana workspace."
  type        = bool
  default     = true
}

variable "grafana_authentication_provider" {
  description = "Grafana sign-in: AWS_SSO or SAML."
  type        = string
  default     = "AWS_SSO"
}

variable "logs_final_action" {
  description = "Task logs after 90 days: DEEP_ARCHIVE or EXPIRE."
  type        = string
  default     = "DEEP_ARCHIVE"
}

variable "service_accounts" {
  description = "Kubernetes service accounts that receive IRSA roles (must match charts/airflow and charts/helical-platform): one per Airflow component, the runner, the metrics writer, the log shipper (Fluent Bit)."
  type = object({
    airflow        = map(object({ namespace = string, name = string }))
    runner         = object({ namespace = string, name = string })
    metrics_writer = object({ namespace = string, name = string })
    log_shipper    = object({ namespace = string, name = string })
  })
  default = {
    airflow = {
      api-server    = { namespace = "airflow", name = "airflow-api-server" }
      scheduler     = { namespace = "airflow", name = "airflow-scheduler" }
      dag-processor = { namespace = "airflow", name = "airflow-dag-processor" }
      triggerer     = { namespace = "airflow", name = "airflow-triggerer" }
      worker        = { namespace = "airflow", name = "airflow-worker" }
    }
    runner         = { namespace = "helical", name = "helical-runner" }
    metrics_writer = { namespace = "monitoring", name = "prometheus-agent" }
    log_shipper    = { namespace = "kube-system", name = "fluent-bit" }
  }
}
