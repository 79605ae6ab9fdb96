locals {
  subnet_names = ["System", "User", "AppGateway", "AzureBastionSubnet", "PrivateEndpoints"]

  # cluster x subnet, keyed "<cluster>/<subnet>": the subnets are the VNet's first five /24s.
  subnets = merge([
    for name, cluster in var.clusters : {
      for i, subnet in local.subnet_names : "${name}/${subnet}" => {
        cluster = name
        name    = subnet
        prefix  = cidrsubnet(cluster.address_space, 8, i)
      }
    }
  ]...)

  regions = toset([for c in values(var.clusters) : c.location])

  # Per region, the first of its clusters (by name): it hosts the region's Bastion and Log
  # Analytics workspace. One of each per region, so clusters sharing a region share them.
  region_hub = {
    for region in local.regions : region => sort([
      for name, c in var.clusters : name if c.location == region
    ])[0]
  }

  # The first cluster overall: its region is the shared resources' region, its
  # PrivateEndpoints subnet holds the Key Vault's and the registry's private endpoints.
  hub             = sort(keys(var.clusters))[0]
  shared_location = var.clusters[local.hub].location

  tags = merge({ "managed-by" = "meshflow", "environment" = var.prefix }, var.tags)
}

module "mesh_pairs" {
  source = "../modules/mesh-pairs"
  names  = keys(var.clusters)
}
