variable "clusters" {
  type = map(object({
    resource_group             = string
    node_resource_group        = string
    region                     = string
    api_server_fqdn            = string
    secrets_provider_client_id = string
    app_gateway_name           = string
    app_gateway_resource_group = string
  }))
  description = "The sandbox's clusters by name: where the emulator registered each control plane."
}

variable "subscription_id" {
  type        = string
  description = "The emulator's subscription ID."
}

variable "key_vault" {
  type = object({
    name           = string
    url            = string
    tenant_id      = string
    resource_group = string
  })
  description = "The emulator's Key Vault: name, URL (the emulator's own), tenant, resource group."
}
