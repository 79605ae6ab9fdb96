"""Save the sandbox as a meshflow environment: block documents and a mesh description.

The blocks are the same types a real environment uses; only their values point at the
emulator (endpoints, CA bundle) instead of Azure. The emulator serves one vault, whose URL is
the emulator's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefect.blocks.core import Block
from pydantic import SecretStr

from blocks import AksCluster, AzureCredentials, KeyVault
from meshflow.spec import ClusterSpec, MeshSpec, PkiSettings
from sandbox.azure import DEFAULT_TENANT

ENVIRONMENT = "sandbox"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000a5b0"
TENANT = DEFAULT_TENANT  # the one tenant the emulator serves
CLIENT_ID = "00000000-0000-0000-0000-0000000c11e7"
RESOURCE_GROUP = "meshflow-sandbox-rg"
REGION = "local"
VAULT_NAME = "meshflow-sandbox-kv"


def register_block_types() -> None:
    """``prefect block register -m blocks``, in-process."""
    for block in (AzureCredentials, KeyVault, AksCluster):
        block.register_type_and_schema(_sync=True)  # type: ignore[call-arg]


def _save(block: Block, name: str) -> None:
    # Synchronously even from async code, where Prefect would return an unawaited coroutine.
    block.save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]


def sandbox_spec(
    cluster_names: Sequence[str],
    *,
    environment: str = ENVIRONMENT,
    pki: PkiSettings | None = None,
) -> MeshSpec:
    """The mesh description of a sandbox: the first cluster hosts the sample and ingress."""
    return MeshSpec(
        environment=environment,
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
        vault_name=VAULT_NAME, vault_url=emulator_url, tenant_id=TENANT, credentials=creds
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
