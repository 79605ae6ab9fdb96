"""sandbox/terraform.py: infra/sandbox's inputs from the sandbox's coordinates (pure)."""

from __future__ import annotations

import json
from pathlib import Path

from sandbox import environment as env
from sandbox import terraform as sandbox_terraform
from sandbox.azure.arm import identity_ids, resource_id

URLS = {"cluster-1": "https://127.0.0.1:6443", "cluster-2": "https://127.0.0.1:6444"}


def test_the_inputs_name_what_the_emulator_registers(tmp_path: Path) -> None:
    settings = sandbox_terraform.write_terraform_inputs(tmp_path, URLS, "https://127.0.0.1:8443")
    assert settings.module == "infra/sandbox"
    assert settings.var_file == str(tmp_path / "terraform.tfvars.json")
    assert settings.backend_config == {"path": str(tmp_path / "terraform.tfstate")}
    values = json.loads((tmp_path / "terraform.tfvars.json").read_text())
    one = values["clusters"]["cluster-1"]
    node_rg = f"MC_{env.RESOURCE_GROUP}_cluster-1_{env.REGION}"
    uai = resource_id(
        env.SUBSCRIPTION, node_rg, "Microsoft.ManagedIdentity/userAssignedIdentities",
        "azurekeyvaultsecretsprovider-cluster-1",
    )  # fmt: skip
    assert one == {
        "resource_group": env.RESOURCE_GROUP,
        "node_resource_group": node_rg,
        "region": env.REGION,
        "api_server_fqdn": "127.0.0.1:6443",
        "secrets_provider_client_id": identity_ids(uai)[0],
        "app_gateway_name": "aks-appgw-local",
        "app_gateway_resource_group": node_rg,
    }
    assert values["key_vault"]["name"] == env.VAULT_NAME
    assert values["subscription_id"] == env.SUBSCRIPTION


def test_writing_the_same_coordinates_again_leaves_the_file_alone(tmp_path: Path) -> None:
    sandbox_terraform.write_terraform_inputs(tmp_path, URLS, "https://127.0.0.1:8443")
    path = tmp_path / "terraform.tfvars.json"
    before = path.stat().st_mtime_ns
    state = {
        "clusters": [{"name": n, "api_url": u} for n, u in URLS.items()],
        "emulator": {"url": "https://127.0.0.1:8443"},
    }
    sandbox_terraform.terraform_inputs_from_state(tmp_path, state)
    assert path.stat().st_mtime_ns == before
