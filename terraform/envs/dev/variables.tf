variable "region" {
  description = "AWS region of the stack."
  type        = string
  default     = "eu-west-1"
}

variable "bucket_prefix" {
  description = "Globally unique prefix of the bucket names (e.g. <org>-helical-<env>)."
  type        = string
}

variable "eks_public_access_cidrs" {
  description = "Ranges allowed on a public Kubernetes API endpoint; empty keeps the API private."
  type        = list(string)
  default     = []
}

variable "grafana_authentication_provider" {
  description = "Grafana sign-in: AWS_SSO (IAM Identity Center) or SAML."
  type        = string
  default     = "AWS_SSO"
}
