"""The sandbox as a Terraform module's inputs: ``infra/sandbox`` with the sandbox's coordinates.

The sandbox's clusters and vault exist before Terraform runs (control planes and the emulator
are processes, not cloud resources); ``infra/sandbox`` records them as null resources and
emits them through the same output contract as ``infra/azure`` (``meshflow/infra.py``), so
``provision: apply`` runs the real ``terraform plan``/``apply`` in the sandbox: the first run
adds them, a second has no changes. The variables (no secret among them) are written to
``terraform.tfvars.json`` in the sandbox's state folder, the state beside them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshflow.spec import TerraformSettings
from sandbox.azure.arm import identity_ids, resource_id
from sandbox.environment import REGION, RESOURCE_GROUP, SUBSCRIPTION, TENANT, VAULT_NAME

MODULE = "infra/sandbox"
VAR_FILE = "terraform.tfvars.json"
STATE_FILE = "terraform.tfstate"
_IDENTITIES = "Microsoft.ManagedIdentity/userAssignedIdentities"


def node_resource_group(cluster: str) -> str:
    """The node resource group the emulator gives a sandbox cluster (as AKS names it)."""
    return f"MC_{RESOURCE_GROUP}_{cluster}_{REGION}"


def secrets_provider_client_id(cluster: str) -> str:
    """The client ID of the emulator's Key Vault Secrets Provider identity of ``cluster``."""
    uai = resource_id(
        SUBSCRIPTION, node_resource_group(cluster), _IDENTITIES,
        f"azurekeyvaultsecretsprovider-{cluster}",
    )  # fmt: skip
    return identity_ids(uai)[0]


def sandbox_variables(api_urls: Mapping[str, str], vault_url: str) -> dict[str, Any]:
    """``infra/sandbox``'s variables: ``api_urls`` maps each cluster to its API server URL."""
    return {
        "subscription_id": SUBSCRIPTION,
        "clusters": {
            name: {
                "resource_group": RESOURCE_GROUP,
                "node_resource_group": node_resource_group(name),
                "region": REGION,
                "api_server_fqdn": url.removeprefix("https://").rstrip("/"),
                "secrets_provider_client_id": secrets_provider_client_id(name),
                "app_gateway_name": f"aks-appgw-{REGION}",
                "app_gateway_resource_group": node_resource_group(name),
            }
            for name, url in api_urls.items()
        },
        "key_vault": {
            "name": VAULT_NAME,
            "url": vault_url,
            "tenant_id": TENANT,
            "resource_group": RESOURCE_GROUP,
        },
    }


def terraform_settings(root: Path) -> TerraformSettings:
    """The mesh description's ``terraform`` for the sandbox in ``root`` (absolute paths)."""
    return TerraformSettings(
        module=MODULE,
        var_file=str(root / VAR_FILE),
        backend_config={"path": str(root / STATE_FILE)},
    )


def write_terraform_inputs(
    root: Path, api_urls: Mapping[str, str], vault_url: str
) -> TerraformSettings:
    """Write ``root/terraform.tfvars.json`` for the sandbox's clusters and vault; the settings.

    Idempotent: the same coordinates write the same file (so a second plan has no changes).
    """
    path = root / VAR_FILE
    text = json.dumps(sandbox_variables(api_urls, vault_url), indent=2, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return terraform_settings(root)


def terraform_inputs_from_state(root: Path, state: Mapping[str, Any]) -> TerraformSettings:
    """:func:`write_terraform_inputs` from a sandbox's ``state.json`` (``sandbox.stack``)."""
    api_urls = {c["name"]: c["api_url"] for c in state["clusters"]}
    return write_terraform_inputs(root, api_urls, state["emulator"]["url"])
