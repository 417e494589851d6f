# Roles of the control plane, the nodes, and the kube-system IRSA roles.
# Nodes get only what the kubelet needs (join the cluster, pull from ECR):
# workloads use their own IRSA roles, never the node's credentials.

resource "aws_iam_role" "cluster" {
  name        = "${var.name}-cluster"
  description = "EKS control plane of ${var.name}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "eks.amazonaws.com" }
      Action    = ["sts:AssumeRole", "sts:TagSession"]
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

resource "aws_iam_role_policy" "cluster_kms" {
  name = "${var.name}-secrets-kms"
  role = aws_iam_role.cluster.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "EnvelopeEncryptSecrets"
      Effect   = "Allow"
      Action   = ["kms:Encrypt", "kms:Decrypt", "kms:ListGrants", "kms:DescribeKey"]
      Resource = var.secrets_kms_key_arn
    }]
  })
}

resource "aws_iam_role" "node" {
  name        = "${var.name}-node"
  description = "EKS managed nodes of ${var.name}: join the cluster and pull images, nothing else"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset(["AmazonEKSWorkerNodePolicy", "AmazonEC2ContainerRegistryPullOnly"])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.key}"
}

locals {
  oidc_host = trimprefix(aws_iam_openid_connect_provider.this.url, "https://")

  # kube-system IRSA roles, each trusted by exactly one service account.
  irsa = {
    vpc_cni = {
      service_account = { namespace = "kube-system", name = "aws-node" }
      managed_policy  = "AmazonEKS_CNI_Policy"
      inline_policy   = null
    }
    cluster_autoscaler = {
      service_account = var.cluster_autoscaler_service_account
      managed_policy  = null
      inline_policy = jsonencode({
        Version = "2012-10-17"
        Statement = [
          {
            # Describe* calls have no resource-level permissions in IAM.
            Sid    = "DiscoverGroupsAndInstanceTypes"
            Effect = "Allow"
            Action = [
              "autoscaling:DescribeAutoScalingGroups",
              "autoscaling:DescribeAutoScalingInstances",
              "autoscaling:DescribeLaunchConfigurations",
              "autoscaling:DescribeScalingActivities",
              "autoscaling:DescribeTags",
              "ec2:DescribeImages",
              "ec2:DescribeInstanceTypes",
              "ec2:DescribeLaunchTemplateVersions",
              "ec2:GetInstanceTypesFromInstanceRequirements",
            ]
            Resource = "*"
          },
          {
            Sid      = "ReadNodeGroupsOfThisCluster"
            Effect   = "Allow"
            Action   = ["eks:DescribeNodegroup"]
            Resource = "arn:${local.partition}:eks:${data.aws_region.current.name}:${local.account_id}:nodegroup/${var.name}/*/*"
          },
          {
            # Managed node groups tag their ASGs with this key: the
            # autoscaler can resize only this cluster's groups.
            Sid      = "ResizeOnlyThisClustersGroups"
            Effect   = "Allow"
            Action   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
            Resource = "*"
            Condition = {
              StringEquals = { "aws:ResourceTag/k8s.io/cluster-autoscaler/${var.name}" = "owned" }
            }
          },
        ]
      })
    }
  }
}

resource "aws_iam_role" "irsa" {
  for_each = local.irsa

  name        = "${var.name}-${replace(each.key, "_", "-")}"
  description = "IRSA role of ${each.value.service_account.namespace}/${each.value.service_account.name}"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "OneServiceAccountOnly"
      Effect    = "Allow"
      Principal = { Federated = aws_iam_openid_connect_provider.this.arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = {
          "${local.oidc_host}:sub" = "system:serviceaccount:${each.value.service_account.namespace}:${each.value.service_account.name}"
          "${local.oidc_host}:aud" = "sts.amazonaws.com"
        }
      }
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy_attachment" "irsa" {
  for_each = { for k, v in local.irsa : k => v.managed_policy if v.managed_policy != null }

  role       = aws_iam_role.irsa[each.key].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

resource "aws_iam_role_policy" "irsa" {
  for_each = { for k, v in local.irsa : k => v.inline_policy if v.inline_policy != null }

  name   = "${var.name}-${replace(each.key, "_", "-")}"
  role   = aws_iam_role.irsa[each.key].id
  policy = each.value
}
