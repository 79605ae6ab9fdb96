output "meshflow" {
  description = "meshflow's output contract (meshflow/infra.py): the clusters and the Key Vault."
  value = {
    subscription_id = data.azurerm_client_config.current.subscription_id
    clusters = {
      for name, aks in azurerm_kubernetes_cluster.cluster : name => {
        name                       = aks.name
        resource_group             = aks.resource_group_name
        node_resource_group        = aks.node_resource_group
        region                     = aks.location
        api_server_fqdn            = aks.fqdn
        secrets_provider_client_id = aks.key_vault_secrets_provider[0].secret_identity[0].client_id
        # /subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Network/applicationGateways/<name>
        app_gateway_name           = split("/", aks.ingress_application_gateway[0].effective_gateway_id)[8]
        app_gateway_resource_group = split("/", aks.ingress_application_gateway[0].effective_gateway_id)[4]
      }
    }
    key_vault = {
      name           = azurerm_key_vault.shared.name
      url            = azurerm_key_vault.shared.vault_uri
      tenant_id      = azurerm_key_vault.shared.tenant_id
      resource_group = azurerm_key_vault.shared.resource_group_name
    }
  }
}
