# Private control plane, full logging, KMS for Secrets, GPU taints, minimal
# node role, IRSA for kube-system: checked on a mocked apply (no AWS).

mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name                = "helical-test"
  vpc_id              = "vpc-123"
  subnet_ids          = ["subnet-a", "subnet-b", "subnet-c"]
  secrets_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/eks"
  logs_kms_key_arn    = "arn:aws:kms:eu-west-1:123456789012:key/logs"
}

run "private_encrypted_fully_logged_control_plane" {
  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].endpoint_private_access && !aws_eks_cluster.this.vpc_config[0].endpoint_public_access
    error_message = "the API endpoint must be private by default"
  }

  assert {
    condition     = toset(aws_eks_cluster.this.enabled_cluster_log_types) == toset(["api", "audit", "authenticator", "controllerManager", "scheduler"])
    error_message = "every control-plane log type must be enabled"
  }

  assert {
    condition     = aws_eks_cluster.this.encryption_config[0].provider[0].key_arn == var.secrets_kms_key_arn && aws_eks_cluster.this.encryption_config[0].resources == toset(["secrets"])
    error_message = "Kubernetes Secrets must be envelope-encrypted with the EKS key"
  }

  assert {
    condition     = aws_cloudwatch_log_group.cluster.kms_key_id == var.logs_kms_key_arn && aws_cloudwatch_log_group.cluster.name == "/aws/eks/helical-test/cluster"
    error_message = "control-plane logs must land in the KMS-encrypted group EKS writes to"
  }

  assert {
    condition     = aws_iam_openid_connect_provider.this.client_id_list == toset(["sts.amazonaws.com"])
    error_message = "the OIDC provider must serve the STS audience only"
  }
}

run "gpu_nodes_are_tainted_and_nodes_hardened" {
  assert {
    condition     = toset(keys(aws_eks_node_group.this)) == toset(["system", "cpu", "gpu", "gpu-l40s"])
    error_message = "expected system, cpu and one GPU node group per profile GPU type (gpu, gpu-l40s)"
  }

  assert {
    condition = alltrue([for g in ["gpu", "gpu-l40s"] :
    [for t in aws_eks_node_group.this[g].taint : "${t.key}=${t.value}:${t.effect}"] == ["nvidia.com/gpu=true:NO_SCHEDULE"]])
    error_message = "GPU nodes must carry nvidia.com/gpu=true:NoSchedule"
  }

  assert {
    condition     = aws_eks_node_group.this["gpu"].labels["helical.ai/gpu-type"] == "nvidia-a10g" && aws_eks_node_group.this["gpu-l40s"].labels["helical.ai/gpu-type"] == "nvidia-l40s"
    error_message = "GPU node groups must carry the helical.ai/gpu-type label the runner pods select"
  }

  assert {
    condition     = length(aws_eks_node_group.this["system"].taint) == 0 && length(aws_eks_node_group.this["cpu"].taint) == 0
    error_message = "CPU and system nodes must stay untainted"
  }

  assert {
    condition = alltrue([for lt in aws_launch_template.node :
    lt.metadata_options[0].http_tokens == "required" && lt.metadata_options[0].http_put_response_hop_limit == 1 && lt.block_device_mappings[0].ebs[0].encrypted == "true"])
    error_message = "nodes need IMDSv2 with hop limit 1 and encrypted root volumes"
  }

  assert {
    condition = toset([for a in aws_iam_role_policy_attachment.node : a.policy_arn]) == toset([
      "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy", "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly",
    ])
    error_message = "the node role may hold only the worker-node and ECR pull policies (the CNI uses IRSA)"
  }
}

run "gpu_nodes_can_be_spot" {
  variables {
    node_groups = {
      gpu = {
        instance_types = ["g5.xlarge"]
        capacity_type  = "SPOT"
        ami_type       = "AL2023_x86_64_NVIDIA"
        min_size       = 0
        max_size       = 2
        desired_size   = 0
        taints         = [{ key = "nvidia.com/gpu", value = "true", effect = "NO_SCHEDULE" }]
      }
    }
  }

  assert {
    condition     = aws_eks_node_group.this["gpu"].capacity_type == "SPOT"
    error_message = "the GPU group must follow capacity_type"
  }
}

run "untainted_gpu_group_is_refused" {
  command = plan

  variables {
    node_groups = {
      gpu = { instance_types = ["g5.xlarge"], ami_type = "AL2023_x86_64_NVIDIA", min_size = 0, max_size = 1, desired_size = 0 }
    }
  }

  expect_failures = [var.node_groups]
}

run "kube_system_irsa_roles" {
  assert {
    condition = [for k in ["cluster_autoscaler", "vpc_cni"] :
      jsondecode(aws_iam_role.irsa[k].assume_role_policy).Statement[0].Condition.StringEquals["oidc.eks.eu-west-1.amazonaws.com/id/MOCK:sub"]
    ] == ["system:serviceaccount:kube-system:cluster-autoscaler", "system:serviceaccount:kube-system:aws-node"]
    error_message = "each kube-system role must trust exactly its own service account"
  }

  assert {
    condition = alltrue([for s in jsondecode(aws_iam_role_policy.irsa["cluster_autoscaler"].policy).Statement :
      !contains(s.Action, "autoscaling:SetDesiredCapacity") ? true :
      s.Condition.StringEquals["aws:ResourceTag/k8s.io/cluster-autoscaler/helical-test"] == "owned"
    ])
    error_message = "the autoscaler may resize only groups tagged as owned by this cluster"
  }

  assert {
    condition     = aws_eks_addon.before_nodes["vpc-cni"].service_account_role_arn == aws_iam_role.irsa["vpc_cni"].arn
    error_message = "the VPC CNI must use its IRSA role"
  }
}
