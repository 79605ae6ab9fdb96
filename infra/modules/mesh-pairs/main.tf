# The full mesh of VNet peerings between N clusters: every unordered pair once, each in both
# directions. Pure (no provider, no resource), so both root modules share it and a test can
# evaluate it with any Terraform >= 1.0.

variable "names" {
  type        = set(string)
  description = "The clusters' names (the keys of the root module's clusters map)."
}

locals {
  sorted = sort(tolist(var.names))

  # Each unordered pair once: {a, b} with a sorted before b.
  pairs = {
    for pair in flatten([
      for i, a in local.sorted : [
        for j, b in local.sorted : { a = a, b = b } if i < j
      ]
    ]) : "${pair.a}--${pair.b}" => pair
  }

  # Each pair in both directions: what one azurerm_virtual_network_peering is made of.
  peerings = merge([
    for key, pair in local.pairs : {
      "${pair.a}-to-${pair.b}" = { local = pair.a, remote = pair.b, pair = key }
      "${pair.b}-to-${pair.a}" = { local = pair.b, remote = pair.a, pair = key }
    }
  ]...)
}

output "pairs" {
  description = "Every unordered pair of clusters once, keyed \"<a>--<b>\" (a sorts before b)."
  value       = local.pairs
}

output "peerings" {
  description = "Every directed peering, keyed \"<local>-to-<remote>\": local, remote and its pair."
  value       = local.peerings
}
