# The whole production platform, wired once; envs/dev and envs/prod only
# choose sizes. Dependencies run through module outputs: KMS keys first,
# then network, cluster and data stores, then the IRSA roles that need the
# cluster's OIDC provider and the buckets.

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the first az_count zones (sorted by name) are used, so a zone AWS adds later never changes where subnets live.
  state = "available"
}

locals {
  azs = slice(data.aws_availability_zones.available.names, 0, var.az_count)
}

module "security" {
  source = "../security"

  name                              = var.name
  tags                              = var.tags
  oidc_provider_arn                 = module.eks.oidc_provider_arn
  oidc_provider_url                 = module.eks.oidc_provider_url
  airflow_service_accounts          = var.service_accounts.airflow
  runner_service_account            = var.service_accounts.runner
  metrics_writer_service_account    = var.service_accounts.metrics_writer
  log_shipper_service_account       = var.service_accounts.log_shipper
  log_group_arns                    = values(module.observability.log_group_arns)
  amp_workspace_arn                 = module.observability.amp_workspace_arn
  cloudtrail_bucket_name            = module.storage.audit_bucket_name
  cloudtrail_log_retention_days     = var.log_retention_days
  cloudtrail_data_event_bucket_arns = [for k in ["datasets", "outputs", "models"] : module.storage.bucket_arns[k]]
  buckets = {
    datasets = module.storage.bucket_arns["datasets"]
    outputs  = module.storage.bucket_arns["outputs"]
    models   = module.storage.bucket_arns["models"]
    logs     = module.storage.bucket_arns["logs"]
  }
}

module "network" {
  source = "../network"

  name                    = var.name
  tags                    = var.tags
  cidr_block              = var.vpc_cidr
  azs                     = local.azs
  cluster_name            = var.name
  single_nat_gateway      = var.single_nat_gateway
  flow_log_retention_days = var.log_retention_days
  logs_kms_key_arn        = module.security.kms_key_arns["logs"]
}

module "eks" {
  source = "../eks"

  name                   = var.name
  tags                   = var.tags
  kubernetes_version     = var.kubernetes_version
  vpc_id                 = module.network.vpc_id
  subnet_ids             = module.network.private_subnet_ids
  endpoint_public_access = length(var.eks_public_access_cidrs) > 0
  public_access_cidrs    = var.eks_public_access_cidrs
  secrets_kms_key_arn    = module.security.kms_key_arns["eks"]
  logs_kms_key_arn       = module.security.kms_key_arns["logs"]
  log_retention_days     = var.log_retention_days
  node_groups            = var.node_groups
}

module "storage" {
  source = "../storage"

  name                          = var.name
  tags                          = var.tags
  bucket_prefix                 = var.bucket_prefix
  kms_key_arn                   = module.security.kms_key_arns["s3"]
  logs_final_action             = var.logs_final_action
  create_efs                    = var.create_efs
  efs_kms_key_arn               = module.security.kms_key_arns["efs"]
  vpc_id                        = module.network.vpc_id
  efs_subnet_ids                = module.network.private_subnet_ids
  efs_client_security_group_ids = [module.eks.workloads_security_group_id]
}

module "database" {
  source = "../database"

  name                      = var.name
  tags                      = var.tags
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.data_subnet_ids
  client_security_group_ids = [module.eks.workloads_security_group_id]
  kms_key_arn               = module.security.kms_key_arns["database"]
  logs_kms_key_arn          = module.security.kms_key_arns["logs"]
  log_retention_days        = var.log_retention_days
  instance_class            = var.db_instance_class
  multi_az                  = var.db_multi_az
  backup_retention_days     = var.db_backup_retention_days
  deletion_protection       = var.deletion_protection
}

module "cache" {
  source = "../cache"

  name                      = var.name
  tags                      = var.tags
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.data_subnet_ids
  client_security_group_ids = [module.eks.workloads_security_group_id]
  kms_key_arn               = module.security.kms_key_arns["cache"]
  logs_kms_key_arn          = module.security.kms_key_arns["logs"]
  log_retention_days        = var.log_retention_days
  node_type                 = var.cache_node_type
  num_cache_clusters        = var.cache_num_nodes
}

module "observability" {
  source = "../observability"

  name                            = var.name
  tags                            = var.tags
  metrics_kms_key_arn             = module.security.kms_key_arns["metrics"]
  logs_kms_key_arn                = module.security.kms_key_arns["logs"]
  log_retention_days              = var.log_retention_days
  create_grafana                  = var.create_grafana
  grafana_authentication_provider = var.grafana_authentication_provider
}
