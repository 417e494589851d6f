# EKS control plane: private API endpoint, all control-plane log types into a
# KMS-encrypted log group, Secrets envelope-encrypted with KMS, access
# entries (no aws-auth ConfigMap), and the OIDC provider that IRSA uses.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  log_types  = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
}

# Created before the cluster so EKS does not create it without KMS/retention.
resource "aws_cloudwatch_log_group" "cluster" {
  #checkov:skip=CKV_AWS_338:Retention is 7-180 days by design (spec section 7.1); the long-term archive is the KMS-encrypted S3 logs bucket with Glacier lifecycle.
  name              = "/aws/eks/${var.name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.logs_kms_key_arn
  tags              = var.tags
}

resource "aws_eks_cluster" "this" {
  #checkov:skip=CKV_AWS_39:The public endpoint is off by default and in both envs; it opens only with named public_access_cidrs (0.0.0.0/0 is refused by validation).
  name                      = var.name
  version                   = var.kubernetes_version
  role_arn                  = aws_iam_role.cluster.arn
  enabled_cluster_log_types = local.log_types

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = var.cluster_admin_on_create
  }

  vpc_config {
    subnet_ids              = var.subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = var.endpoint_public_access
    public_access_cidrs     = var.endpoint_public_access ? var.public_access_cidrs : null
  }

  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = var.secrets_kms_key_arn
    }
  }

  tags = var.tags

  depends_on = [
    aws_cloudwatch_log_group.cluster,
    aws_iam_role_policy_attachment.cluster,
    aws_iam_role_policy.cluster_kms,
  ]
}

resource "aws_iam_openid_connect_provider" "this" {
  url            = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list = ["sts.amazonaws.com"]
  tags           = merge(var.tags, { Name = "${var.name}-irsa" })
}

# Every node carries this group besides the EKS-managed cluster group. It
# opens nothing itself: RDS, Redis and EFS admit traffic *from* it, so only
# the cluster's nodes and pods reach them.
resource "aws_security_group" "workloads" {
  name        = "${var.name}-workloads"
  description = "Identity of EKS nodes and pods for data-tier security groups"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-workloads" })
}

resource "aws_eks_addon" "before_nodes" {
  for_each = toset(["vpc-cni", "kube-proxy"])

  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = each.key
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  # The CNI's AWS permissions live on its own IRSA role, not on every node.
  service_account_role_arn = each.key == "vpc-cni" ? aws_iam_role.irsa["vpc_cni"].arn : null
  tags                     = var.tags
}

resource "aws_eks_addon" "coredns" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "coredns"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "OVERWRITE"
  tags                        = var.tags

  depends_on = [aws_eks_node_group.this] # its pods need nodes to become active
}
