"""Save the sandbox as a meshflow environment: block documents and a mesh description.

The blocks are the same types a real environment uses; only their values point at the
emulator (endpoints, CA bundle) instead of Azure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from blocks import AksCluster, AzureCredentials, KeyVault
from meshflow.spec import ClusterSpec, MeshSpec
from sandbox import stack

if TYPE_CHECKING:
    from sandbox.stack import Sandbox


def register_block_types() -> None:
    """``prefect block register -m blocks``, in-process."""
    for block in (AzureCredentials, KeyVault, AksCluster):
        block.register_type_and_schema()


def sandbox_vault_url(emulator_url: str, vault_name: str) -> str:
    """The emulator serves each vault under its own path prefix."""
    return f"{emulator_url.rstrip('/')}/vaults/{vault_name}"


def sandbox_spec(cluster_names: list[str]) -> MeshSpec:
    """The mesh description of the sandbox: the first cluster hosts the sample and ingress."""
    env = stack.ENVIRONMENT
    return MeshSpec(
        environment=env,
        credentials_block=env,
        key_vault_block=env,
        clusters=tuple(
            ClusterSpec(name=n, aks_block=f"{env}-{n}", sample_workload=i == 0, ingress=i == 0)
            for i, n in enumerate(cluster_names)
        ),
    )


def save_sandbox_environment(sandbox: Sandbox, state: Mapping[str, Any]) -> MeshSpec:
    """Register block types, save the sandbox's block documents, write ``mesh.yaml``.

    Must run with ``PREFECT_API_URL`` pointing at the sandbox's Prefect server.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    emulator = state["emulator"]
    spec = sandbox_spec([c["name"] for c in state["clusters"]])
    with temporary_settings(updates={PREFECT_API_URL: state["prefect"]["api_url"]}):
        register_block_types()
        creds = AzureCredentials(
            auth="service-principal",
            tenant_id=stack.TENANT,
            client_id=stack.CLIENT_ID,
            client_secret=SecretStr(stack.new_client_secret()),
            authority_host=emulator["url"],
            arm_endpoint=emulator["url"],
            ca_bundle=emulator["ca_bundle"],
        )
        creds.save(spec.credentials_block, overwrite=True)
        KeyVault(
            vault_name=stack.VAULT_NAME,
            vault_url=sandbox_vault_url(emulator["url"], stack.VAULT_NAME),
            tenant_id=stack.TENANT,
            credentials=creds,
        ).save(spec.key_vault_block, overwrite=True)
        for cluster in spec.clusters:
            AksCluster(
                subscription_id=stack.SUBSCRIPTION,
                resource_group=stack.RESOURCE_GROUP,
                cluster_name=cluster.name,
                region=stack.REGION,
                credentials=creds,
            ).save(cluster.aks_block, overwrite=True)
    (sandbox.root / "mesh.yaml").write_text(spec.to_yaml())
    return spec
