# Full-mesh VNet peering: every unordered pair once, in both directions (infra/modules/mesh-pairs).

resource "azurerm_virtual_network_peering" "mesh" {
  for_each = module.mesh_pairs.peerings

  name                         = each.key
  resource_group_name          = azurerm_resource_group.cluster[each.value.local].name
  virtual_network_name         = azurerm_virtual_network.cluster[each.value.local].name
  remote_virtual_network_id    = azurerm_virtual_network.cluster[each.value.remote].id
  allow_virtual_network_access = true
  allow_forwarded_traffic      = true
}

# One Bastion per region, in the VNet of the region's first cluster.
resource "azurerm_public_ip" "bastion" {
  for_each = local.region_hub

  name                = "${var.prefix}-${each.key}-bastion-pip"
  location            = each.key
  resource_group_name = azurerm_resource_group.cluster[each.value].name
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

resource "azurerm_bastion_host" "region" {
  for_each = local.region_hub

  name                = "${var.prefix}-${each.key}-bastion"
  location            = each.key
  resource_group_name = azurerm_resource_group.cluster[each.value].name
  tags                = local.tags

  ip_configuration {
    name                 = "bastion"
    subnet_id            = azurerm_subnet.cluster["${each.value}/AzureBastionSubnet"].id
    public_ip_address_id = azurerm_public_ip.bastion[each.key].id
  }
}

# Private DNS for the private endpoints, linked to every VNet.
resource "azurerm_private_dns_zone" "shared" {
  for_each = toset(["privatelink.vaultcore.azure.net", "privatelink.azurecr.io"])

  name                = each.key
  resource_group_name = azurerm_resource_group.shared.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "shared" {
  for_each = {
    for pair in setproduct(keys(azurerm_private_dns_zone.shared), keys(var.clusters)) :
    "${pair[0]}/${pair[1]}" => { zone = pair[0], cluster = pair[1] }
  }

  name                  = "${each.value.cluster}-link"
  resource_group_name   = azurerm_resource_group.shared.name
  private_dns_zone_name = azurerm_private_dns_zone.shared[each.value.zone].name
  virtual_network_id    = azurerm_virtual_network.cluster[each.value.cluster].id
  tags                  = local.tags
}
