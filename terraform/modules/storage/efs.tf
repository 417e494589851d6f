# Optional EFS for the Airflow DAG folder: encrypted with KMS, mounted only
# over TLS from the EKS workloads' security group, through one access point
# that pins the POSIX identity and the directory.

resource "aws_efs_file_system" "dags" {
  count = var.create_efs ? 1 : 0

  creation_token   = "${var.name}-dags"
  encrypted        = true
  kms_key_id       = var.efs_kms_key_arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }

  tags = merge(var.tags, { Name = "${var.name}-dags" })
}

resource "aws_efs_backup_policy" "dags" {
  count = var.create_efs ? 1 : 0

  file_system_id = aws_efs_file_system.dags[0].id
  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_efs_file_system_policy" "dags" {
  count = var.create_efs ? 1 : 0

  file_system_id = aws_efs_file_system.dags[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = "*"
        Resource  = aws_efs_file_system.dags[0].arn
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "MountOnlyThroughAccessPoint"
        Effect    = "Allow"
        Principal = { AWS = "*" }
        Action    = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
        Resource  = aws_efs_file_system.dags[0].arn
        Condition = {
          Bool         = { "elasticfilesystem:AccessedViaMountTarget" = "true" }
          StringEquals = { "elasticfilesystem:AccessPointArn" = aws_efs_access_point.dags[0].arn }
        }
      },
    ]
  })
}

resource "aws_efs_access_point" "dags" {
  count = var.create_efs ? 1 : 0

  file_system_id = aws_efs_file_system.dags[0].id
  posix_user {
    uid = var.efs_posix_uid
    gid = 0
  }
  root_directory {
    path = "/dags"
    creation_info {
      owner_uid   = var.efs_posix_uid
      owner_gid   = 0
      permissions = "0755"
    }
  }
  tags = merge(var.tags, { Name = "${var.name}-dags" })
}

resource "aws_security_group" "efs" {
  count = var.create_efs ? 1 : 0

  name        = "${var.name}-efs"
  description = "NFS into the DAG file system from EKS workloads only"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-efs" })
}

resource "aws_vpc_security_group_ingress_rule" "efs" {
  # count, not for_each: the group IDs are only known after apply.
  count = var.create_efs ? length(var.efs_client_security_group_ids) : 0

  security_group_id            = aws_security_group.efs[0].id
  description                  = "NFS from EKS workloads"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = var.efs_client_security_group_ids[count.index]
}

resource "aws_efs_mount_target" "dags" {
  count = var.create_efs ? length(var.efs_subnet_ids) : 0

  file_system_id  = aws_efs_file_system.dags[0].id
  subnet_id       = var.efs_subnet_ids[count.index]
  security_groups = [aws_security_group.efs[0].id]
}
