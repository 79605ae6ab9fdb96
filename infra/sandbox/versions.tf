terraform {
  required_version = ">= 1.0"

  required_providers {
    null = {
      source  = "hashicorp/null"
      version = "2.1.2"
    }
  }

  # The state's path comes from -backend-config (path=<sandbox root>/terraform.tfstate).
  backend "local" {}
}
