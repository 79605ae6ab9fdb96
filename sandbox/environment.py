"""Save the sandbox as a meshflow environment: block documents and a mesh description.

The blocks are the same types a real environment uses; only their values point at the
emulator (endpoints, CA bundle) instead of Azure. The emulator serves one vault, whose URL is
the emulator's own; as an ARM resource it is ``VAULT_NAME`` (premium) in ``RESOURCE_GROUP`` of
``SUBSCRIPTION`` (:data:`VAULT_ID`), where access policies are added to it. Its token endpoint
knows only registered client applications, so the service principal the blocks name is
registered with the same secret the blocks hold.

What the emulator must know is registered by :func:`wire_environment` through the admin API,
or given to the emulator process as its config (each ``*_registration`` function is one
entry): the client (``clients``), the vault (``vaults``) and the clusters (``clusters``; each
comes with its App Gateway ``aks-appgw-local`` and that gateway's public IP
``aks-appgw-local-appgwpip`` in the cluster's node resource group
``MC_<RESOURCE_GROUP>_<cluster>_<REGION>``, see ``sandbox.azure.arm``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from prefect.blocks.core import Block
from pydantic import SecretStr

from blocks import AksCluster, AzureCredentials, KeyVault, forget_blocks
from deployments.environment import register_block_types
from meshflow.spec import ClusterSpec, MeshSpec, PkiSettings, TerraformSettings
from sandbox.azure import DEFAULT_TENANT
from sandbox.azure.arm import resource_id
from sandbox.kube import LocalCluster

ENVIRONMENT = "sandbox"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000a5b0"
TENANT = DEFAULT_TENANT  # the one tenant the emulator serves
CLIENT_ID = "00000000-0000-0000-0000-0000000c11e7"
RESOURCE_GROUP = "meshflow-sandbox-rg"
REGION = "local"
VAULT_NAME = "meshflow-sandbox-kv"
VAULT_SKU = "premium"  # the mesh root is an RSA-HSM key (blocks.KeyVault.hsm_keys)
VAULT_ID = resource_id(SUBSCRIPTION, RESOURCE_GROUP, "Microsoft.KeyVault/vaults", VAULT_NAME)
"""The sandbox vault's ARM resource id: ``VAULT_NAME`` in ``RESOURCE_GROUP`` of ``SUBSCRIPTION``."""


def _save(block: Block, name: str) -> None:
    # Synchronously even from async code, where Prefect would return an unawaited coroutine.
    block.save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]
    forget_blocks()


def sandbox_spec(
    cluster_names: Sequence[str],
    *,
    environment: str = ENVIRONMENT,
    pki: PkiSettings | None = None,
    terraform: TerraformSettings | None = None,
) -> MeshSpec:
    """The mesh description of a sandbox: the first cluster hosts the sample and ingress.

    ``terraform``: the sandbox's root module (``infra/sandbox``), applied as the install's
    first stage; none: the blocks are adopted as they are.
    """
    return MeshSpec(
        environment=environment,
        provision="apply" if terraform else "adopt",
        terraform=terraform,
        credentials_block=environment,
        key_vault_block=environment,
        clusters=tuple(
            ClusterSpec(
                name=n, aks_block=f"{environment}-{n}", sample_workload=i == 0, ingress=i == 0
            )
            for i, n in enumerate(cluster_names)
        ),
        pki=pki or PkiSettings(),
    )


def save_environment(
    spec: MeshSpec, *, emulator_url: str, ca_bundle: str, client_secret: str
) -> None:
    """Register the block types and save ``spec``'s blocks pointing at the emulator.

    Saves to the Prefect API in force (the caller sets ``PREFECT_API_URL``).
    """
    register_block_types()
    creds = AzureCredentials(
        auth="service-principal",
        tenant_id=TENANT,
        client_id=CLIENT_ID,
        client_secret=SecretStr(client_secret),
        authority_host=emulator_url,
        arm_endpoint=emulator_url,
        ca_bundle=ca_bundle,
    )
    _save(creds, spec.credentials_block)
    vault = KeyVault(
        vault_name=VAULT_NAME,
        vault_url=emulator_url,
        tenant_id=TENANT,
        # fields added to blocks.KeyVault: where the vault's ARM resource (access policies) is
        subscription_id=SUBSCRIPTION,
        resource_group=RESOURCE_GROUP,
        credentials=creds,
    )
    _save(vault, spec.key_vault_block)
    for cluster in spec.clusters:
        aks = AksCluster(
            subscription_id=SUBSCRIPTION,
            resource_group=RESOURCE_GROUP,
            cluster_name=cluster.name,
            region=REGION,
            credentials=creds,
        )
        _save(aks, cluster.aks_block)


class Emulator(Protocol):
    """The in-process emulator or its admin client: what wiring an environment needs."""

    url: str

    @property
    def ca_bundle(self) -> Path: ...  # noqa: D102

    def register_cluster(  # noqa: D102
        self, subscription: str, resource_group: str, name: str, **spec: Any
    ) -> None: ...

    def register_vault(  # noqa: D102
        self, subscription: str, resource_group: str, name: str, **spec: Any
    ) -> None: ...

    def register_client(self, client_id: str, secret: str) -> None: ...  # noqa: D102


def client_registration(secret: str) -> dict[str, str]:
    """The sandbox's service principal as an entry of the emulator config's ``clients`` list.

    Save the blocks with the same ``secret`` (``save_environment(client_secret=secret)``): the
    emulator's token endpoint refuses any other (AADSTS7000215).
    """
    return {"client_id": CLIENT_ID, "secret": secret}


def vault_registration() -> dict[str, str]:
    """The sandbox's Key Vault as an entry of the emulator config's ``vaults`` list.

    Registering it again (every start of the emulator process applies its config) keeps the
    vault as it is, access policies included.
    """
    return {
        "subscription": SUBSCRIPTION,
        "resourceGroup": RESOURCE_GROUP,
        "name": VAULT_NAME,
        "location": REGION,
        "sku": VAULT_SKU,
    }


def cluster_registration(cluster: LocalCluster) -> dict[str, Any]:
    """How the emulator knows a local control plane: as an AKS cluster of the sandbox."""
    return {
        "subscription": SUBSCRIPTION,
        "resourceGroup": RESOURCE_GROUP,
        "name": cluster.name,
        "location": REGION,
        "admin_kubeconfig": cluster.admin_kubeconfig.read_text(),
        "user_kubeconfig": cluster.user_kubeconfig.read_text(),
        "fqdn": cluster.api_url.removeprefix("https://"),
        "aad": False,
    }


def wire_environment(
    emulator: Emulator,
    clusters: Sequence[LocalCluster],
    *,
    environment: str = ENVIRONMENT,
    pki: PkiSettings | None = None,
) -> MeshSpec:
    """Register ``clusters``, the vault and a new client secret with ``emulator``, save the blocks.

    Returns the mesh description. The clusters come with their App Gateways and public IPs;
    what already exists (the vault's access policies, a gateway's certificates) is kept. The
    secret is added to the sandbox's service principal (earlier environments' secrets stay
    valid) before the blocks that hold it are saved.
    """
    vault = vault_registration()
    emulator.register_vault(
        vault.pop("subscription"), vault.pop("resourceGroup"), vault.pop("name"), **vault
    )
    for cluster in clusters:
        spec = cluster_registration(cluster)
        emulator.register_cluster(
            spec.pop("subscription"), spec.pop("resourceGroup"), spec.pop("name"), **spec
        )
    client_secret = secrets.token_urlsafe(24)
    client = client_registration(client_secret)
    emulator.register_client(client["client_id"], client["secret"])
    mesh = sandbox_spec([c.name for c in clusters], environment=environment, pki=pki)
    save_environment(
        mesh,
        emulator_url=emulator.url,
        ca_bundle=str(emulator.ca_bundle),
        client_secret=client_secret,
    )
    return mesh
