# The one internet-facing security group: HTTPS into the public load
# balancer (Airflow UI/API). The AWS Load Balancer Controller attaches it via
# the Ingress annotation alb.ingress.kubernetes.io/security-groups; the load
# balancer forwards only into the VPC.

resource "aws_security_group" "public_lb" {
  #checkov:skip=CKV2_AWS_5:Attached by the AWS Load Balancer Controller from Kubernetes, not by Terraform.
  name        = "${var.name}-public-lb"
  description = "HTTPS from the internet to the public load balancer only"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "${var.name}-public-lb" })
}

resource "aws_vpc_security_group_ingress_rule" "public_lb_https" {
  for_each = toset(var.lb_ingress_cidrs)

  security_group_id = aws_security_group.public_lb.id
  description       = "HTTPS from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "public_lb_to_vpc" {
  security_group_id = aws_security_group.public_lb.id
  description       = "Forward to targets inside the VPC only"
  ip_protocol       = "tcp"
  from_port         = 1024
  to_port           = 65535
  cidr_ipv4         = aws_vpc.this.cidr_block
}
