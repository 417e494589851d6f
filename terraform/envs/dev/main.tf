# dev: the same platform and the same controls at the smallest sizes: one
# NAT gateway, burstable RDS/Redis (still Multi-AZ: failover is tested where
# it is cheap), small nodes, spot CPU and GPU workers, shorter log retention.

module "platform" {
  source = "../../modules/platform"

  name                            = "helical-dev"
  bucket_prefix                   = var.bucket_prefix
  single_nat_gateway              = true
  eks_public_access_cidrs         = var.eks_public_access_cidrs
  grafana_authentication_provider = var.grafana_authentication_provider
  log_retention_days              = 14
  logs_final_action               = "EXPIRE"

  db_instance_class        = "db.t4g.medium"
  db_multi_az              = true
  db_backup_retention_days = 7
  deletion_protection      = true
  cache_node_type          = "cache.t4g.micro"
  cache_num_nodes          = 2

  node_groups = {
    system = {
      instance_types = ["t3.large"]
      min_size       = 1
      max_size       = 2
      desired_size   = 1
      labels         = { "helical.ai/pool" = "system" }
    }
    cpu = {
      instance_types = ["m6i.xlarge", "m5.xlarge"]
      capacity_type  = "SPOT"
      min_size       = 0
      max_size       = 3
      desired_size   = 0
      labels         = { "helical.ai/pool" = "cpu" }
    }
    gpu = {
      instance_types = ["g5.2xlarge"] # A10G; 8 vCPU / 32 GiB so a Geneformer or scGPT pod (4 CPU, 24Gi) fits
      capacity_type  = "SPOT"
      ami_type       = "AL2023_x86_64_NVIDIA"
      min_size       = 0
      max_size       = 1
      desired_size   = 0
      disk_size_gib  = 150
      labels         = { "helical.ai/pool" = "gpu", "helical.ai/gpu-type" = "nvidia-a10g" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
    gpu-l40s = {
      instance_types = ["g6e.2xlarge"] # L40S 48 GB, 8 vCPU / 64 GiB: a UCE pod (6 CPU, 48Gi) fits
      capacity_type  = "SPOT"
      ami_type       = "AL2023_x86_64_NVIDIA"
      min_size       = 0
      max_size       = 1
      desired_size   = 0
      disk_size_gib  = 150
      labels         = { "helical.ai/pool" = "gpu", "helical.ai/gpu-type" = "nvidia-l40s" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
  }
}
