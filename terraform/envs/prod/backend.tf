# Remote state: S3 (versioned, KMS-encrypted) with a DynamoDB lock table.
# Names are per organisation: override them at init with
#   terraform init -backend-config="bucket=<org>-helical-tfstate" -backend-config="dynamodb_table=<org>-helical-tflock"
# Tests and offline validation use: terraform init -backend=false
terraform {
  backend "s3" {
    bucket         = "helical-workflow-tfstate"
    key            = "helical/prod/terraform.tfstate"
    region         = "eu-west-1"
    dynamodb_table = "helical-workflow-tflock"
    encrypt        = true
  }
}
