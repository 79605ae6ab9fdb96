# Shared: one resource group with the Key Vault, the container registry and their private
# endpoints; a Log Analytics workspace per region, with diagnostic settings.

resource "azurerm_resource_group" "shared" {
  name     = "${var.prefix}-${local.shared_location}-shared-rg"
  location = local.shared_location
  tags     = local.tags
}

resource "azurerm_key_vault" "shared" {
  name                       = var.key_vault_name
  location                   = azurerm_resource_group.shared.location
  resource_group_name        = azurerm_resource_group.shared.name
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "premium" # the mesh root is an RSA-HSM key
  purge_protection_enabled   = true
  soft_delete_retention_days = 90
  tags                       = local.tags
}

# The deployer (meshflow's identity): what the PKI and rotation flows need.
resource "azurerm_key_vault_access_policy" "deployer" {
  key_vault_id = azurerm_key_vault.shared.id
  tenant_id    = data.azurerm_client_config.current.tenant_id
  object_id    = data.azurerm_client_config.current.object_id

  secret_permissions      = ["Get", "List", "Set", "Delete", "Recover"]
  certificate_permissions = ["Get", "List", "Create", "Import", "Update", "Delete", "ManageContacts", "ManageIssuers", "Recover"]
  key_permissions         = ["Get", "List", "Create", "Sign", "Verify", "Update", "Delete", "Recover"]
}

# Every cluster's Key Vault Secrets Provider identity reads the mesh's secrets.
resource "azurerm_key_vault_access_policy" "secrets_provider" {
  for_each = var.clusters

  key_vault_id = azurerm_key_vault.shared.id
  tenant_id    = data.azurerm_client_config.current.tenant_id
  object_id    = azurerm_kubernetes_cluster.cluster[each.key].key_vault_secrets_provider[0].secret_identity[0].object_id

  secret_permissions = ["Get"]
}

resource "azurerm_container_registry" "shared" {
  name                          = var.acr_name
  location                      = azurerm_resource_group.shared.location
  resource_group_name           = azurerm_resource_group.shared.name
  sku                           = "Premium"
  admin_enabled                 = false
  public_network_access_enabled = false
  tags                          = local.tags

  # A replica in every other region the clusters use.
  dynamic "georeplications" {
    for_each = setsubtract(local.regions, [local.shared_location])
    content {
      location = georeplications.value
      tags     = local.tags
    }
  }
}

resource "azurerm_role_assignment" "acr_pull" {
  for_each = var.clusters

  scope                = azurerm_container_registry.shared.id
  role_definition_name = "AcrPull"
  principal_id         = azurerm_kubernetes_cluster.cluster[each.key].kubelet_identity[0].object_id
}

locals {
  private_endpoints = {
    vault    = { id = azurerm_key_vault.shared.id, subresource = "vault", zone = "privatelink.vaultcore.azure.net" }
    registry = { id = azurerm_container_registry.shared.id, subresource = "registry", zone = "privatelink.azurecr.io" }
  }
}

resource "azurerm_private_endpoint" "shared" {
  for_each = local.private_endpoints

  name                = "${var.prefix}-${each.key}-pe"
  location            = local.shared_location
  resource_group_name = azurerm_resource_group.shared.name
  subnet_id           = azurerm_subnet.cluster["${local.hub}/PrivateEndpoints"].id
  tags                = local.tags

  private_service_connection {
    name                           = "${var.prefix}-${each.key}"
    private_connection_resource_id = each.value.id
    subresource_names              = [each.value.subresource]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = each.key
    private_dns_zone_ids = [azurerm_private_dns_zone.shared[each.value.zone].id]
  }
}

resource "azurerm_log_analytics_workspace" "region" {
  for_each = local.region_hub

  name                = "${var.prefix}-${each.key}-logs"
  location            = each.key
  resource_group_name = azurerm_resource_group.cluster[each.value].name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

resource "azurerm_monitor_diagnostic_setting" "cluster" {
  for_each = var.clusters

  name                       = "${each.key}-diagnostics"
  target_resource_id         = azurerm_kubernetes_cluster.cluster[each.key].id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.region[each.value.location].id

  dynamic "enabled_log" {
    for_each = toset(["kube-apiserver", "kube-audit-admin", "kube-controller-manager", "guard"])
    content {
      category = enabled_log.value
    }
  }

  metric {
    category = "AllMetrics"
  }
}

resource "azurerm_monitor_diagnostic_setting" "key_vault" {
  name                       = "${var.key_vault_name}-diagnostics"
  target_resource_id         = azurerm_key_vault.shared.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.region[local.shared_location].id

  enabled_log {
    category = "AuditEvent"
  }

  metric {
    category = "AllMetrics"
  }
}
