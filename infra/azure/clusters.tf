# Per cluster: resource group, VNet and its five subnets, the cluster's identity, AKS with a
# tainted system pool and a user pool. All for_each over var.clusters: no block per cluster.

resource "azurerm_resource_group" "cluster" {
  for_each = var.clusters

  # <prefix>-<location>-aks-<n> -> <prefix>-<location>-<n>-rg
  name     = "${replace(each.key, "-aks-", "-")}-rg"
  location = each.value.location
  tags     = local.tags
}

resource "azurerm_virtual_network" "cluster" {
  for_each = var.clusters

  name                = "${each.key}-vnet"
  location            = each.value.location
  resource_group_name = azurerm_resource_group.cluster[each.key].name
  address_space       = [each.value.address_space]
  tags                = local.tags
}

resource "azurerm_subnet" "cluster" {
  for_each = local.subnets

  name                 = each.value.name
  resource_group_name  = azurerm_resource_group.cluster[each.value.cluster].name
  virtual_network_name = azurerm_virtual_network.cluster[each.value.cluster].name
  address_prefixes     = [each.value.prefix]
}

resource "azurerm_user_assigned_identity" "cluster" {
  for_each = var.clusters

  name                = "${each.key}-identity"
  location            = each.value.location
  resource_group_name = azurerm_resource_group.cluster[each.key].name
  tags                = local.tags
}

# Azure CNI in our own subnets: the cluster's identity manages them.
resource "azurerm_role_assignment" "cluster_network" {
  for_each = var.clusters

  scope                = azurerm_virtual_network.cluster[each.key].id
  role_definition_name = "Network Contributor"
  principal_id         = azurerm_user_assigned_identity.cluster[each.key].principal_id
}

resource "azurerm_kubernetes_cluster" "cluster" {
  for_each = var.clusters

  name                = each.key
  location            = each.value.location
  resource_group_name = azurerm_resource_group.cluster[each.key].name
  dns_prefix          = each.key
  kubernetes_version  = var.kubernetes_version
  tags                = local.tags

  default_node_pool {
    name           = "system"
    vm_size        = each.value.system_pool.vm_size
    node_count     = each.value.system_pool.node_count
    vnet_subnet_id = azurerm_subnet.cluster["${each.key}/System"].id
    # Taints the pool CriticalAddonsOnly=true:NoSchedule: only system add-ons run here.
    only_critical_addons_enabled = true
  }

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.cluster[each.key].id]
  }

  network_profile {
    network_plugin = "azure"
    network_policy = "azure"
    service_cidr   = var.service_cidr
    dns_service_ip = var.dns_service_ip
  }

  # AGIC: the add-on creates its App Gateway in the AppGateway subnet.
  ingress_application_gateway {
    gateway_name = "aks-appgw-${each.value.location}"
    subnet_id    = azurerm_subnet.cluster["${each.key}/AppGateway"].id
  }

  key_vault_secrets_provider {
    secret_rotation_enabled  = true
    secret_rotation_interval = "3m"
  }

  oms_agent {
    log_analytics_workspace_id = azurerm_log_analytics_workspace.region[each.value.location].id
  }

  depends_on = [azurerm_role_assignment.cluster_network]
}

resource "azurerm_kubernetes_cluster_node_pool" "user" {
  for_each = var.clusters

  name                  = "user"
  mode                  = "User"
  kubernetes_cluster_id = azurerm_kubernetes_cluster.cluster[each.key].id
  vm_size               = each.value.user_pool.vm_size
  node_count            = each.value.user_pool.node_count
  vnet_subnet_id        = azurerm_subnet.cluster["${each.key}/User"].id
  tags                  = local.tags
}

# AGIC's identity writes the App Gateway's subnet and reads the VNet.
resource "azurerm_role_assignment" "agic_network" {
  for_each = var.clusters

  scope                = azurerm_virtual_network.cluster[each.key].id
  role_definition_name = "Network Contributor"
  principal_id         = azurerm_kubernetes_cluster.cluster[each.key].ingress_application_gateway[0].ingress_application_gateway_identity[0].object_id
}
