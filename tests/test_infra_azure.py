"""infra/azure, read with python-hcl2 (azurerm cannot be downloaded here, so it is never init'ed).

python-hcl2 is pinned to 7.x: 8.x installs a top-level ``cli`` package over meshflow's.

The output contract in both root modules, typed and described variables, clusters built with
for_each over one map (no block per cluster), and the environments' tfvars matching their
mesh files. The peering pairs and `terraform fmt` run the real binary:
tests/test_terraform_modules.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from meshflow.infra import OUTPUT_NAME, ClusterOutputs, InfraOutputs, KeyVaultOutputs
from meshflow.spec import MeshSpec

REPO = Path(__file__).resolve().parents[1]
MODULES = ("infra/azure", "infra/sandbox")
ENVIRONMENTS = ("dev", "staging", "prod")


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of labels and strings: drop them, recursively."""
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if k != "__comments__"}
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parsed(module: str, kind: str) -> list[dict[str, Any]]:
    """Every ``kind`` block (variable, output, resource, locals) of ``module``, as parsed."""
    found: list[dict[str, Any]] = []
    for path in sorted((REPO / module).glob("*.tf")):
        with path.open() as f:
            found += unquote(hcl2.load(f)).get(kind, [])
    return found


def blocks(module: str, kind: str) -> dict[str, Any]:
    """``module``'s ``kind`` blocks by label (or the locals by name)."""
    return {k: v for block in parsed(module, kind) for k, v in block.items()}


def resources(module: str) -> dict[str, dict[str, Any]]:
    """``{"type.name": body}`` of ``module``'s resources."""
    return {
        f"{kind}.{name}": body
        for block in parsed(module, "resource")
        for kind, named in block.items()
        for name, body in named.items()
    }


@pytest.mark.parametrize("module", MODULES)
def test_both_modules_declare_every_field_of_the_output_contract(module: str) -> None:
    outputs = blocks(module, "output")
    assert list(outputs) == [OUTPUT_NAME]  # the one output
    value = outputs[OUTPUT_NAME]["value"]
    assert set(value) == set(InfraOutputs.model_fields)
    assert set(value["key_vault"]) == set(KeyVaultOutputs.model_fields)
    clusters = value["clusters"]  # a for expression: each field assigned in it
    missing = [f for f in ClusterOutputs.model_fields if f'"{f}": ' not in clusters]
    assert missing == []


@pytest.mark.parametrize("module", MODULES)
def test_every_variable_has_a_type_and_a_description(module: str) -> None:
    variables = blocks(module, "variable")
    assert variables
    undescribed = [n for n, v in variables.items() if not v.get("description")]
    untyped = [n for n, v in variables.items() if not v.get("type")]
    assert (undescribed, untyped) == ([], [])


def test_the_azure_module_pins_terraform_azurerm_4_and_a_configurable_backend() -> None:
    terraform = unquote(hcl2.loads((REPO / "infra/azure/versions.tf").read_text()))["terraform"][0]
    assert terraform["required_version"] == ">= 1.5"
    assert terraform["required_providers"][0]["azurerm"]["version"] == "~> 4.0"
    assert terraform["backend"] == [{"azurerm": {}}]  # configured by -backend-config


PER_CLUSTER = {
    "azurerm_resource_group.cluster",
    "azurerm_virtual_network.cluster",
    "azurerm_user_assigned_identity.cluster",
    "azurerm_kubernetes_cluster.cluster",
    "azurerm_kubernetes_cluster_node_pool.user",
    "azurerm_key_vault_access_policy.secrets_provider",
}


def test_clusters_are_built_with_for_each_over_one_map() -> None:
    found = resources("infra/azure")
    assert set(found) >= PER_CLUSTER
    for address in PER_CLUSTER:
        assert found[address]["for_each"] == "${var.clusters}", address
    assert found["azurerm_subnet.cluster"]["for_each"] == "${local.subnets}"
    assert found["azurerm_virtual_network_peering.mesh"]["for_each"] == (
        "${module.mesh_pairs.peerings}"
    )
    # one resource of each kind per cluster type: no aks_one / aks_two copies
    kinds = [address.split(".")[0] for address in found]
    assert kinds.count("azurerm_kubernetes_cluster") == 1
    assert kinds.count("azurerm_virtual_network") == 1
    numbered = re.compile(r"(^|_)(one|two|three|\d+)$")
    assert [a for a in found if numbered.search(a.split(".")[1])] == []


def test_the_clusters_have_what_system_md_asks_for() -> None:
    found = resources("infra/azure")
    aks = found["azurerm_kubernetes_cluster.cluster"]
    pool = aks["default_node_pool"][0]
    assert (pool["name"], pool["only_critical_addons_enabled"]) == ("system", True)
    assert found["azurerm_kubernetes_cluster_node_pool.user"]["name"] == "user"
    network = aks["network_profile"][0]
    assert (network["network_plugin"], network["network_policy"]) == ("azure", "azure")
    agic = aks["ingress_application_gateway"][0]
    assert agic["gateway_name"] == "aks-appgw-${each.value.location}"
    assert "/AppGateway" in agic["subnet_id"]
    provider = aks["key_vault_secrets_provider"][0]
    assert (provider["secret_rotation_enabled"], provider["secret_rotation_interval"]) == (
        True,
        "3m",
    )
    locals_ = blocks("infra/azure", "locals")
    assert locals_["subnet_names"] == [
        "System", "User", "AppGateway", "AzureBastionSubnet", "PrivateEndpoints",
    ]  # fmt: skip
    assert found["azurerm_key_vault.shared"]["sku_name"] == "premium"
    assert found["azurerm_key_vault_access_policy.secrets_provider"]["secret_permissions"] == [
        "Get"
    ]
    acr = found["azurerm_container_registry.shared"]
    assert acr["sku"] == "Premium"
    assert "georeplications" in str(acr["dynamic"])
    assert found["azurerm_bastion_host.region"]["for_each"] == "${local.region_hub}"
    assert found["azurerm_log_analytics_workspace.region"]["for_each"] == "${local.region_hub}"
    links = found["azurerm_private_dns_zone_virtual_network_link.shared"]["for_each"]
    assert "keys(var.clusters)" in links


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_environment_has_tfvars_for_the_clusters_of_its_mesh_file(environment: str) -> None:
    folder = REPO / "deployments" / "environments"
    with (folder / f"{environment}.tfvars").open() as f:
        tfvars = unquote(hcl2.load(f))
    spec = MeshSpec.from_yaml(folder / f"{environment}.yaml")
    assert sorted(tfvars["clusters"]) == sorted(spec.cluster_names)
    assert tfvars["prefix"] == environment
    spaces = [c["address_space"] for c in tfvars["clusters"].values()]
    assert len(set(spaces)) == len(spaces)  # peered VNets must not overlap
    for name, cluster in tfvars["clusters"].items():
        assert name.startswith(f"{environment}-{cluster['location']}-aks-")
    required = {n for n, v in blocks("infra/azure", "variable").items() if "default" not in v}
    assert required <= set(tfvars)
