output "platform" {
  description = "Everything a platform engineer needs next: cluster, buckets, IRSA role ARNs, endpoints, secrets, AMP remote-write URL."
  value = {
    cluster_name                = module.platform.cluster_name
    cluster_endpoint            = module.platform.cluster_endpoint
    vpc_id                      = module.platform.vpc_id
    bucket_names                = module.platform.bucket_names
    irsa_role_arns              = module.platform.irsa_role_arns
    database_endpoint           = module.platform.database_endpoint
    database_secret_arn         = module.platform.database_secret_arn
    redis_endpoint              = module.platform.redis_endpoint
    redis_auth_token_secret_arn = module.platform.redis_auth_token_secret_arn
    amp_remote_write_url        = module.platform.amp_remote_write_url
    grafana_endpoint            = module.platform.grafana_endpoint
    kms_key_arns                = module.platform.kms_key_arns
    efs_access_point_id         = module.platform.efs_access_point_id
  }
}
