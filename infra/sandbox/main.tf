# The sandbox's infrastructure as Terraform sees it: no cloud provider. Each cluster, each
# peering and the vault is a null_resource whose triggers are its coordinates, so plan and
# apply have real semantics (a first plan adds them, a second has no changes, a changed
# coordinate replaces one), and the output is the same contract infra/azure produces.

module "mesh_pairs" {
  source = "../modules/mesh-pairs"
  names  = keys(var.clusters)
}

resource "null_resource" "cluster" {
  for_each = var.clusters

  triggers = merge(each.value, { name = each.key })
}

resource "null_resource" "peering" {
  for_each = module.mesh_pairs.peerings

  triggers = {
    local  = null_resource.cluster[each.value.local].id
    remote = null_resource.cluster[each.value.remote].id
  }
}

resource "null_resource" "key_vault" {
  triggers = var.key_vault
}
