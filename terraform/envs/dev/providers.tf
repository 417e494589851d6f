provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project     = "helical-workflow"
      Environment = "dev"
      ManagedBy   = "terraform"
    }
  }
}
