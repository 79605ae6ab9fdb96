# infra/azure inputs for "prod" (clusters as in prod.yaml). Use it as the mesh description's
# terraform.var_file: deployments/environments/prod.tfvars. No secrets here: the identity comes
# from the credentials block, the state's location from terraform.backend_config.
prefix         = "prod"
key_vault_name = "meshflow-prod-kv"
acr_name       = "meshflowprodacr"

clusters = {
  "prod-westeurope-aks-1" = {
    location      = "westeurope"
    address_space = "10.52.0.0/16"
    system_pool   = { vm_size = "Standard_D4ds_v5", node_count = 3 }
    user_pool     = { vm_size = "Standard_D8ds_v5", node_count = 3 }
  }
  "prod-northeurope-aks-2" = {
    location      = "northeurope"
    address_space = "10.53.0.0/16"
    system_pool   = { vm_size = "Standard_D4ds_v5", node_count = 3 }
    user_pool     = { vm_size = "Standard_D8ds_v5", node_count = 3 }
  }
  "prod-eastus2-aks-3" = {
    location      = "eastus2"
    address_space = "10.54.0.0/16"
    system_pool   = { vm_size = "Standard_D4ds_v5", node_count = 3 }
    user_pool     = { vm_size = "Standard_D8ds_v5", node_count = 3 }
  }
}
