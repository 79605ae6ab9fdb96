# infra/azure inputs for "dev" (clusters as in dev.yaml). Use it as the mesh description's
# terraform.var_file: deployments/environments/dev.tfvars. No secrets here: the identity comes
# from the credentials block, the state's location from terraform.backend_config.
prefix         = "dev"
key_vault_name = "meshflow-dev-kv"
acr_name       = "meshflowdevacr"

clusters = {
  "dev-westeurope-aks-1" = {
    location      = "westeurope"
    address_space = "10.52.0.0/16"
    system_pool   = { vm_size = "Standard_D4ds_v5", node_count = 1 }
    user_pool     = { vm_size = "Standard_D8ds_v5", node_count = 2 }
  }
  "dev-westeurope-aks-2" = {
    location      = "westeurope"
    address_space = "10.53.0.0/16"
    system_pool   = { vm_size = "Standard_D4ds_v5", node_count = 1 }
    user_pool     = { vm_size = "Standard_D8ds_v5", node_count = 2 }
  }
}
