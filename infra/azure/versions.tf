terraform {
  required_version = ">= 1.5"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
  }

  # Remote state per environment: -backend-config (resource_group_name, storage_account_name,
  # container_name, key) from the mesh description's terraform.backend_config; credentials
  # from the ARM_* variables meshflow sets from the credentials block.
  backend "azurerm" {}
}

# The subscription and the identity come from ARM_SUBSCRIPTION_ID and the other ARM_*
# variables (tasks/terraform.py sets them from the credentials block), never from a file.
provider "azurerm" {
  features {
    key_vault {
      purge_soft_delete_on_destroy = false
    }
  }
}

data "azurerm_client_config" "current" {}
