variable "prefix" {
  type        = string
  description = "Name prefix of every resource, e.g. the environment (dev, staging, prod)."
}

variable "clusters" {
  type = map(object({
    location      = string
    address_space = string
    system_pool = object({
      vm_size    = string
      node_count = number
    })
    user_pool = object({
      vm_size    = string
      node_count = number
    })
  }))
  description = <<-EOT
    The clusters by name (<prefix>-<location>-aks-<n>, as in the environment's mesh file): its
    region, its VNet's address space (a /16; the five subnets are its first five /24s) and the
    VM size and node count of its system and user pools.
  EOT

  validation {
    condition     = length(var.clusters) > 0
    error_message = "At least one cluster."
  }

  validation {
    condition     = alltrue([for c in values(var.clusters) : can(cidrsubnet(c.address_space, 8, 4))])
    error_message = "Each address_space must be a CIDR block with room for five /24 subnets, e.g. 10.52.0.0/16."
  }
}

variable "kubernetes_version" {
  type        = string
  default     = null
  description = "AKS Kubernetes version; null: AKS's default."
}

variable "service_cidr" {
  type        = string
  default     = "172.16.0.0/16"
  description = "Kubernetes service CIDR of every cluster (outside every VNet)."
}

variable "dns_service_ip" {
  type        = string
  default     = "172.16.0.10"
  description = "The cluster DNS service's IP, inside service_cidr."
}

variable "key_vault_name" {
  type        = string
  description = "The shared Key Vault's name (globally unique, 3-24 characters)."
}

variable "acr_name" {
  type        = string
  description = "The shared container registry's name (globally unique, alphanumeric)."
}

variable "log_retention_days" {
  type        = number
  default     = 30
  description = "Days the Log Analytics workspaces keep data."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource group and resource that takes tags."
}
