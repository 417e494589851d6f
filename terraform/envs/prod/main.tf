# prod: Multi-AZ everything (NAT per AZ, RDS standby, Redis replica with
# failover), larger nodes, on-demand GPUs (a spot reclaim would kill
# multi-hour embedding jobs), deletion protection, EFS for DAGs.

module "platform" {
  source = "../../modules/platform"

  name                            = "helical-prod"
  bucket_prefix                   = var.bucket_prefix
  single_nat_gateway              = false
  eks_public_access_cidrs         = var.eks_public_access_cidrs
  grafana_authentication_provider = var.grafana_authentication_provider
  log_retention_days              = 90
  logs_final_action               = "DEEP_ARCHIVE"
  create_efs                      = true

  db_instance_class        = "db.r6g.large"
  db_multi_az              = true
  db_backup_retention_days = 30
  deletion_protection      = true
  cache_node_type          = "cache.r7g.large"
  cache_num_nodes          = 3

  node_groups = {
    system = {
      instance_types = ["m6i.xlarge"]
      min_size       = 3
      max_size       = 6
      desired_size   = 3
      labels         = { "helical.ai/pool" = "system" }
    }
    cpu = {
      instance_types = ["m6i.4xlarge"]
      min_size       = 1
      max_size       = 20
      desired_size   = 2
      disk_size_gib  = 100
      labels         = { "helical.ai/pool" = "cpu" }
    }
    gpu = {
      instance_types = ["g5.2xlarge"]
      capacity_type  = "ON_DEMAND"
      ami_type       = "AL2023_x86_64_NVIDIA"
      min_size       = 0
      max_size       = 16
      desired_size   = 0
      disk_size_gib  = 300
      labels         = { "helical.ai/pool" = "gpu", "helical.ai/gpu-type" = "nvidia-a10g" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
    gpu-l40s = {
      instance_types = ["g6e.2xlarge"] # L40S 48 GB, 8 vCPU / 64 GiB: a UCE pod (6 CPU, 48Gi) fits
      capacity_type  = "ON_DEMAND"
      ami_type       = "AL2023_x86_64_NVIDIA"
      min_size       = 0
      max_size       = 4
      desired_size   = 0
      disk_size_gib  = 300
      labels         = { "helical.ai/pool" = "gpu", "helical.ai/gpu-type" = "nvidia-l40s" }
      taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
    }
  }
}
