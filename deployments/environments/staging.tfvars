# infra/azure inputs for "staging" (clusters as in staging.yaml). Use it as the mesh description's
# terraform.var_file: deployments/environments/staging.tfvars. No secrets here: the identity comes
# from the credentials block, the state's location from terraform.backend_config.
prefix         = "staging"
key_vault_name = "meshflow-staging-kv"
acr_name       = "meshflowstagingacr"

clusters = {
  "staging-westeurope-aks-1" = {
    location      = "westeurope"
    address_space = "10.52.0.0/16"
    system_pool   = { vm_size = "Standard_D4ds_v5", node_count = 2 }
    user_pool     = { vm_size = "Standard_D8ds_v5", node_count = 2 }
  }
  "staging-eastus2-aks-2" = {
    location      = "eastus2"
    address_space = "10.53.0.0/16"
    system_pool   = { vm_size = "Standard_D4ds_v5", node_count = 2 }
    user_pool     = { vm_size = "Standard_D8ds_v5", node_count = 2 }
  }
}
