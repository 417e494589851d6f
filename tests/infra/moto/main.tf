# Test-only root: the network, storage and security modules applied against
# moto's server on loopback (tests/infra/test_terraform.py drives it). The
# credentials below are moto's fake ones; nothing here can reach AWS.
#
# Not exercised here: IAM Access Analyzer and Amazon Managed Prometheus (moto
# has no Access Analyzer, so the analyzer and the AMP-scoped metrics-writer
# role are switched off). Those are covered by the mocked `terraform test`.

terraform {
  required_version = ">= 1.11"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

variable "endpoint" {
  description = "URL of the moto server, e.g. http://127.0.0.1:5123."
  type        = string
}

variable "bucket_prefix" {
  description = "Bucket name prefix, unique per test session."
  type        = string
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "moto-fake-access-key"
  secret_key                  = "moto-fake-secret-key" # checkov:skip=CKV_SECRET_6: moto accepts any key on loopback; not a credential
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true

  endpoints {
    cloudtrail     = var.endpoint
    ec2            = var.endpoint
    efs            = var.endpoint
    iam            = var.endpoint
    kms            = var.endpoint
    logs           = var.endpoint
    s3             = var.endpoint
    secretsmanager = var.endpoint
    sts            = var.endpoint
  }
}

# Stands in for the EKS cluster's OIDC issuer (the eks module makes the real one).
resource "aws_iam_openid_connect_provider" "cluster" {
  url             = "https://oidc.eks.us-east-1.amazonaws.com/id/MOTOTEST"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["9e99a48a9960b14926bb7f3b02e22da2b0ab7280"]
}

module "security" {
  source = "../../../terraform/modules/security"

  name                       = "helical-moto"
  oidc_provider_arn          = aws_iam_openid_connect_provider.cluster.arn
  oidc_provider_url          = aws_iam_openid_connect_provider.cluster.url
  cloudtrail_bucket_name     = module.storage.audit_bucket_name
  enable_access_analyzer     = false
  create_metrics_writer_role = false
  create_log_shipper_role    = false
  kms_deletion_window_days   = 7
  buckets = {
    datasets = module.storage.bucket_arns["datasets"]
    outputs  = module.storage.bucket_arns["outputs"]
    models   = module.storage.bucket_arns["models"]
    logs     = module.storage.bucket_arns["logs"]
  }
}

module "storage" {
  source = "../../../terraform/modules/storage"

  name          = "helical-moto"
  bucket_prefix = var.bucket_prefix
  kms_key_arn   = module.security.kms_key_arns["s3"]
  force_destroy = true # throwaway buckets
}

module "network" {
  source = "../../../terraform/modules/network"

  name             = "helical-moto"
  azs              = ["us-east-1a", "us-east-1b", "us-east-1c"]
  cluster_name     = "helical-moto"
  logs_kms_key_arn = module.security.kms_key_arns["logs"]
}

output "bucket_names" {
  description = "Bucket name per role."
  value       = module.storage.bucket_names
}

output "kms_key_arns" {
  description = "KMS key per domain."
  value       = module.security.kms_key_arns
}

output "airflow_role_arns" {
  description = "Airflow IRSA role per component."
  value       = module.security.airflow_role_arns
}

output "runner_role_arn" {
  description = "Runner IRSA role."
  value       = module.security.runner_role_arn
}

output "vpc_id" {
  description = "VPC ID."
  value       = module.network.vpc_id
}

output "cloudtrail_arn" {
  description = "Trail ARN."
  value       = module.security.cloudtrail_arn
}
