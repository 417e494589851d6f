variable "name" {
  description = "EKS cluster name (also the prefix of its roles, groups and log group)."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "kubernetes_version" {
  description = "Kubernetes minor version of the control plane and node groups."
  type        = string
  default     = "1.33"
}

variable "vpc_id" {
  description = "VPC of the cluster."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (one per AZ) for the control-plane ENIs and every node group."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "EKS needs subnets in at least two AZs."
  }
}

variable "endpoint_public_access" {
  description = "Expose the Kubernetes API on a public endpoint too. Off: reach it from inside the VPC (VPN, bastion, CI runner in the VPC)."
  type        = bool
  default     = false
}

variable "public_access_cidrs" {
  description = "Source ranges allowed on the public API endpoint when endpoint_public_access is on (never 0.0.0.0/0)."
  type        = list(string)
  default     = []

  validation {
    condition     = !contains(var.public_access_cidrs, "0.0.0.0/0")
    error_message = "public_access_cidrs must not contain 0.0.0.0/0: name the office/VPN ranges."
  }
}

variable "cluster_admin_on_create" {
  description = "Give the identity that creates the cluster admin access (an EKS access entry), so the first Helm install can run."
  type        = bool
  default     = true
}

variable "secrets_kms_key_arn" {
  description = "KMS key ARN for envelope encryption of Kubernetes Secrets."
  type        = string
}

variable "logs_kms_key_arn" {
  description = "KMS key ARN for the control-plane log group."
  type        = string
}

variable "log_retention_days" {
  description = "Days control-plane logs stay in CloudWatch Logs (7-180)."
  type        = number
  default     = 90

  validation {
    condition     = var.log_retention_days >= 7 && var.log_retention_days <= 180
    error_message = "log_retention_days must be between 7 and 180."
  }
}

variable "ebs_kms_key_arn" {
  description = "KMS key ARN for node root volumes; null uses the account's default EBS key (volumes are encrypted either way)."
  type        = string
  default     = null
}

variable "node_groups" {
  description = <<-EOT
    Managed node groups by name. Each: instance_types, capacity_type (ON_DEMAND or SPOT), ami_type,
    min/max/desired size, disk_size_gib, labels, taints ({key, value, effect} with effect NO_SCHEDULE,
    NO_EXECUTE or PREFER_NO_SCHEDULE). Any group on an NVIDIA AMI must carry the
    nvidia.com/gpu=true:NoSchedule taint so only pods that tolerate it (runner jobs) land on GPUs.
  EOT
  type = map(object({
    instance_types = list(string)
    capacity_type  = optional(string, "ON_DEMAND")
    ami_type       = optional(string, "AL2023_x86_64_STANDARD")
    min_size       = number
    max_size       = number
    desired_size   = number
    disk_size_gib  = optional(number, 50)
    labels         = optional(map(string), {})
    taints = optional(list(object({
      key    = string
      value  = string
      effect = string
    })), [])
  }))
  nullable = false # null from a caller means "use these defaults"
  default = {
    system = {
      instance_types = ["m6i.large"]
      min_size       = 2
      max_size       = 3
      desired_size   = 2
      labels         = { "helical.ai/pool" = "system" }
    }
    cpu = {
      instance_types = ["m6i.2xlarge"]
      min_size       = 0
      max_size       = 10
      desired_size   = 1
      labels         = { "helical.ai/pool" = "cpu" }
    }
    # One group per GPU type a runner profile asks for (resources.gpu.type):
    # the DAG's pods select nodes by the helical.ai/gpu-type label.
    gpu = {
      instance_types = ["g5.2xlarge"] # 8 vCPU / 32 GiB: a Geneformer or scGPT pod (4 CPU, 24Gi) fits
      ami_type       = "AL2023_x86_64_NVIDIA"
      min_size       = 0
      max_size       = 4
      desired_size   = 0
      disk_size_gib  = 200
      labels         = { "helical.ai/pool" = "gpu", "helical.ai/gpu-type" = "nvidia-a10g" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
    gpu-l40s = {
      instance_types = ["g6e.2xlarge"] # 8 vCPU / 64 GiB / L40S 48 GB: a UCE pod (6 CPU, 48Gi) fits
      ami_type       = "AL2023_x86_64_NVIDIA"
      min_size       = 0
      max_size       = 2
      desired_size   = 0
      disk_size_gib  = 200
      labels         = { "helical.ai/pool" = "gpu", "helical.ai/gpu-type" = "nvidia-l40s" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
  }

  validation {
    condition     = alltrue([for g in values(var.node_groups) : contains(["ON_DEMAND", "SPOT"], g.capacity_type)])
    error_message = "capacity_type must be ON_DEMAND or SPOT."
  }

  validation {
    condition = alltrue([for g in values(var.node_groups) : !strcontains(g.ami_type, "NVIDIA") || anytrue([
      for t in g.taints : t.key == "nvidia.com/gpu" && t.value == "true" && t.effect == "NO_SCHEDULE"
    ])])
    error_message = "Every GPU (NVIDIA AMI) node group needs the taint nvidia.com/gpu=true:NO_SCHEDULE."
  }

  validation {
    condition     = alltrue([for g in values(var.node_groups) : g.min_size <= g.desired_size && g.desired_size <= g.max_size])
    error_message = "Each node group needs min_size <= desired_size <= max_size."
  }
}

variable "cluster_autoscaler_service_account" {
  description = "The one service account (namespace + name) that may assume the cluster-autoscaler role."
  type = object({
    namespace = string
    name      = string
  })
  default = {
    namespace = "kube-system"
    name      = "cluster-autoscaler"
  }
}
