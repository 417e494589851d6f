# Shared values for `mock_provider "aws" { source = "../../tests/mocks" }`.
# The mocked provider still validates arguments, so every computed ARN that
# feeds another resource must look like a real ARN; the rest stays random.

mock_data "aws_caller_identity" {
  defaults = { account_id = "123456789012" }
}

mock_data "aws_partition" {
  defaults = { partition = "aws" }
}

mock_data "aws_region" {
  defaults = { name = "eu-west-1" }
}

mock_data "aws_availability_zones" {
  defaults = { names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"] }
}

mock_resource "aws_kms_key" {
  defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
}

mock_resource "aws_cloudwatch_log_group" {
  defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:mock" }
}

mock_resource "aws_iam_role" {
  defaults = { arn = "arn:aws:iam::123456789012:role/mock" }
}

mock_resource "aws_iam_openid_connect_provider" {
  defaults = {
    arn = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/MOCK"
    url = "oidc.eks.eu-west-1.amazonaws.com/id/MOCK"
  }
}

mock_resource "aws_eks_cluster" {
  defaults = {
    arn                   = "arn:aws:eks:eu-west-1:123456789012:cluster/mock"
    identity              = [{ oidc = [{ issuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/MOCK" }] }]
    certificate_authority = [{ data = "bW9jaw==" }]
  }
}

mock_resource "aws_db_instance" {
  defaults = {
    arn                = "arn:aws:rds:eu-west-1:123456789012:db:mock"
    master_user_secret = [{ secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds-mock", kms_key_id = "k", secret_status = "active" }]
  }
}

mock_resource "aws_secretsmanager_secret" {
  defaults = { arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mock" }
}

mock_resource "aws_prometheus_workspace" {
  defaults = {
    arn                 = "arn:aws:aps:eu-west-1:123456789012:workspace/ws-mock"
    prometheus_endpoint = "https://aps-workspaces.eu-west-1.amazonaws.com/workspaces/ws-mock/"
  }
}

mock_resource "aws_launch_template" {
  defaults = { id = "lt-0123456789abcdef0", latest_version = 1 }
}

mock_data "aws_secretsmanager_random_password" {
  defaults = { random_password = "MockTokenMockTokenMockTokenMockTokenMockTokenMockTokenMockToken12" }
}
