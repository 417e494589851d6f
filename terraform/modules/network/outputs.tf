output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr_block" {
  description = "IPv4 range of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "public_subnet_ids" {
  description = "Public subnets: internet-facing load balancers and NAT gateways only."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "Private subnets for EKS nodes and pods (egress through NAT/endpoints)."
  value       = aws_subnet.private[*].id
}

output "data_subnet_ids" {
  description = "Isolated subnets for RDS and ElastiCache (no route out of the VPC)."
  value       = aws_subnet.data[*].id
}

output "nat_public_ips" {
  description = "Public IPs of the NAT gateways (the platform's egress addresses, for allow-lists)."
  value       = aws_eip.nat[*].public_ip
}

output "flow_log_group_name" {
  description = "CloudWatch log group holding the VPC flow logs."
  value       = aws_cloudwatch_log_group.flow_logs.name
}

output "public_lb_security_group_id" {
  description = "Security group for the public load balancer (HTTPS only): put it in the Ingress annotation alb.ingress.kubernetes.io/security-groups."
  value       = aws_security_group.public_lb.id
}
