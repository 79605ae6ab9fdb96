output "meshflow" {
  description = "meshflow's output contract (meshflow/infra.py): the clusters and the Key Vault."
  value = {
    subscription_id = var.subscription_id
    clusters = {
      for name, cluster in null_resource.cluster : name => {
        name                       = cluster.triggers.name
        resource_group             = cluster.triggers.resource_group
        node_resource_group        = cluster.triggers.node_resource_group
        region                     = cluster.triggers.region
        api_server_fqdn            = cluster.triggers.api_server_fqdn
        secrets_provider_client_id = cluster.triggers.secrets_provider_client_id
        app_gateway_name           = cluster.triggers.app_gateway_name
        app_gateway_resource_group = cluster.triggers.app_gateway_resource_group
      }
    }
    key_vault = {
      name           = null_resource.key_vault.triggers.name
      url            = null_resource.key_vault.triggers.url
      tenant_id      = null_resource.key_vault.triggers.tenant_id
      resource_group = null_resource.key_vault.triggers.resource_group
    }
  }
}
