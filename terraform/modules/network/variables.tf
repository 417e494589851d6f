variable "name" {
  description = "Name prefix for every resource of this platform (e.g. helical-prod)."
  type        = string
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "cidr_block" {
  description = "IPv4 range of the VPC: /16 leaves each AZ a /19 for pods (VPC CNI gives every pod a VPC address)."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.cidr_block, 0)) && tonumber(split("/", var.cidr_block)[1]) <= 16
    error_message = "cidr_block must be a valid IPv4 CIDR of /16 or larger."
  }
}

variable "azs" {
  description = "Availability zones to spread subnets over (3 for production: Multi-AZ RDS/Redis and node groups survive an AZ loss)."
  type        = list(string)

  validation {
    condition     = length(var.azs) >= 2 && length(var.azs) <= 4
    error_message = "azs must name 2 to 4 availability zones."
  }
}

variable "cluster_name" {
  description = "EKS cluster name, tagged on subnets so the AWS Load Balancer Controller and EKS find them."
  type        = string
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all AZs (cheaper, for dev) instead of one per AZ (an AZ outage keeps egress elsewhere)."
  type        = bool
  default     = false
}

variable "interface_endpoints" {
  description = "AWS services reached through interface VPC endpoints instead of the NAT gateway (names after com.amazonaws.<region>.)."
  type        = list(string)
  # ecr/sts/logs/secretsmanager/kms: image pulls, IRSA, Fluent Bit, secrets.
  # aps-workspaces: the Prometheus agent's remote write to AMP. autoscaling +
  # ec2: the cluster autoscaler. The NetworkPolicies allow 443 only inside
  # the VPC, so each of these calls must find an endpoint there.
  default = ["ecr.api", "ecr.dkr", "sts", "logs", "secretsmanager", "kms", "aps-workspaces", "autoscaling", "ec2"]
}

variable "flow_log_retention_days" {
  description = "Days VPC flow logs stay in CloudWatch Logs (7-180)."
  type        = number
  default     = 30

  validation {
    condition     = var.flow_log_retention_days >= 7 && var.flow_log_retention_days <= 180
    error_message = "flow_log_retention_days must be between 7 and 180."
  }
}

variable "logs_kms_key_arn" {
  description = "KMS key ARN that encrypts the flow-log group (its policy must admit CloudWatch Logs)."
  type        = string
}

variable "lb_ingress_cidrs" {
  description = "Sources allowed to reach the public load balancer on 443 (the only public entry point of the platform)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}
