# Private-by-default networking, checked on a mocked apply (no AWS).

mock_provider "aws" {
  source = "../../tests/mocks"
}

variables {
  name             = "helical-test"
  azs              = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  cluster_name     = "helical-test"
  logs_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/logs"
}

run "three_tiers_over_three_azs" {
  assert {
    condition     = length(aws_subnet.public) == 3 && length(aws_subnet.private) == 3 && length(aws_subnet.data) == 3
    error_message = "each tier needs one subnet per AZ"
  }

  assert {
    condition     = toset(concat(aws_subnet.private[*].availability_zone)) == toset(var.azs)
    error_message = "private subnets must cover every AZ"
  }

  assert {
    condition     = alltrue([for s in concat(aws_subnet.public, aws_subnet.private, aws_subnet.data) : s.map_public_ip_on_launch != true])
    error_message = "no subnet may hand out public IPs"
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 3 && alltrue([for i, r in aws_route.private_nat : r.nat_gateway_id == aws_nat_gateway.this[i].id])
    error_message = "each AZ must leave through its own NAT gateway"
  }

  assert {
    condition     = aws_route.public_internet.route_table_id == aws_route_table.public.id && alltrue([for a in aws_route_table_association.public : a.route_table_id == aws_route_table.public.id])
    error_message = "only the public route table may route to the internet gateway"
  }

  assert {
    condition     = length(aws_route_table.data.route) == 0
    error_message = "the data tier must have no route out of the VPC"
  }
}

run "no_ingress_from_anywhere_except_lb_https" {
  assert {
    condition = alltrue([for r in concat(values(aws_vpc_security_group_ingress_rule.public_lb_https), [aws_vpc_security_group_ingress_rule.endpoints_https]) :
    r.cidr_ipv4 != "0.0.0.0/0" || (r.security_group_id == aws_security_group.public_lb.id && r.from_port == 443 && r.to_port == 443)])
    error_message = "only the load balancer may accept 0.0.0.0/0, and only on 443"
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.endpoints_https.cidr_ipv4 == "10.40.0.0/16"
    error_message = "interface endpoints must accept HTTPS from the VPC only"
  }

  assert {
    condition     = length(aws_default_security_group.this.ingress) == 0 && length(aws_default_security_group.this.egress) == 0
    error_message = "the default security group must stay closed"
  }
}

run "endpoints_and_flow_logs" {
  assert {
    condition     = aws_vpc_endpoint.s3.vpc_endpoint_type == "Gateway" && length(aws_vpc_endpoint.s3.route_table_ids) == 4
    error_message = "S3 must be reached through a gateway endpoint from the private and data tiers"
  }

  assert {
    condition     = toset(keys(aws_vpc_endpoint.interface)) == toset(["ecr.api", "ecr.dkr", "sts", "logs", "secretsmanager", "kms", "aps-workspaces", "autoscaling", "ec2"])
    error_message = "ECR, STS, Logs, Secrets Manager, KMS, AMP (aps-workspaces), Auto Scaling and EC2 need interface endpoints"
  }

  assert {
    condition     = alltrue([for e in aws_vpc_endpoint.interface : e.private_dns_enabled && e.security_group_ids == toset([aws_security_group.endpoints.id])])
    error_message = "interface endpoints need private DNS and the endpoint security group"
  }

  assert {
    condition     = aws_flow_log.this.traffic_type == "ALL" && aws_flow_log.this.log_destination == aws_cloudwatch_log_group.flow_logs.arn
    error_message = "flow logs must capture all traffic into the flow-log group"
  }

  assert {
    condition     = aws_cloudwatch_log_group.flow_logs.kms_key_id == var.logs_kms_key_arn && aws_cloudwatch_log_group.flow_logs.retention_in_days == 30
    error_message = "the flow-log group must be KMS-encrypted with bounded retention"
  }
}

run "dev_shares_one_nat" {
  variables {
    single_nat_gateway = true
  }

  assert {
    condition     = length(aws_nat_gateway.this) == 1 && alltrue([for r in aws_route.private_nat : r.nat_gateway_id == aws_nat_gateway.this[0].id])
    error_message = "single_nat_gateway must route every AZ through one NAT"
  }
}

run "retention_outside_7_to_180_is_refused" {
  command = plan

  variables {
    flow_log_retention_days = 365
  }

  expect_failures = [var.flow_log_retention_days]
}
