"""AKS through Azure Resource Manager: cluster credentials (step 01).

Credentials are held **in memory only**, per process, never written to ``~/.kube`` or returned
as a task result: :func:`get_cluster_credentials` fetches them and returns a reference, and the
Kubernetes tasks ask :func:`cluster_access` for the cached value (fetching again if this process
has none, e.g. on another worker). Entra ID (AAD) clusters get an Entra token for the AKS server
application instead of the kubelogin ``exec`` entry, which a flow cannot run.

Needs the ``Microsoft.ContainerService/managedClusters/listClusterAdminCredential/action`` (admin)
or ``listClusterUserCredential/action`` (user) permission on each cluster.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from typing import Any

from prefect.cache_policies import INPUTS, RUN_ID
from pydantic import BaseModel, ConfigDict

from blocks import AksCluster, load_block
from blocks import block_name as saved_name
from blocks.runtime import RUNTIME, Memo
from meshflow.errors import MeshflowError
from meshflow.kubeconfig import AKS_AAD_SERVER_APP, ClusterAccess, KubeconfigError, parse_kubeconfig
from meshflow.spec import ClusterSpec
from tasks.blocking import blocking_task
from tasks.sdk_errors import azure_errors

CREDENTIAL_TTL = 30 * 60.0
"""Seconds a fetched credential is reused in this process (Entra tokens last about an hour)."""

_CREDENTIALS: Memo[ClusterAccess] = RUNTIME.memo("cluster-credentials", ttl=CREDENTIAL_TTL)


class AksError(MeshflowError):
    """An AKS cluster answered with something meshflow cannot use (no kubeconfig, no add-on)."""


class CredentialRef(BaseModel):
    """What a flow may see of a cluster's credentials: where, and how, never the secret."""

    model_config = ConfigDict(frozen=True)
    aks_block: str
    cluster_name: str
    server: str
    auth: str
    admin: bool


def arm_errors(block: AksCluster, block_name: str, action: str) -> AbstractContextManager[None]:
    """The ARM error boundary for a call made with ``block``'s credentials.

    See :func:`tasks.sdk_errors.azure_errors`; ``action`` names the permission a 403 asks for.
    """
    return azure_errors(
        "Azure Resource Manager",
        f"AKS cluster {block.cluster_name!r} (resource group {block.resource_group!r}, "
        f"subscription {block.subscription_id!r}, from block {block_name!r})",
        permission=f"the {action} permission on the cluster",
        credentials=saved_name(block.credentials),
    )


def _fetch(block: AksCluster, block_name: str, admin: bool) -> ClusterAccess:
    client = block.container_service_client()
    ops = client.managed_clusters
    fetch = ops.list_cluster_admin_credentials if admin else ops.list_cluster_user_credentials
    kind = "Admin" if admin else "User"
    action = f"Microsoft.ContainerService/managedClusters/listCluster{kind}Credential/action"
    where = f"AKS cluster {block.cluster_name!r} (block {block_name!r})"
    with arm_errors(block, block_name, action):
        result = fetch(block.resource_group, block.cluster_name)
    if not result.kubeconfigs or not result.kubeconfigs[0].value:
        raise AksError(f"{where} returned no kubeconfig", system="Azure Resource Manager")
    try:
        access = parse_kubeconfig(result.kubeconfigs[0].value)
    except KubeconfigError as exc:
        raise AksError(f"{where}: {exc}") from exc
    if access.auth == "aad-exec":
        with arm_errors(block, block_name, action):
            token = block.credentials.get_credential().get_token(f"{AKS_AAD_SERVER_APP}/.default")
        access = dataclasses.replace(access, auth="token", token=token.token)
    return access


def cluster_access(block_name: str, *, admin: bool = True, refresh: bool = False) -> ClusterAccess:
    """The in-memory credentials of the cluster in AKS block ``block_name``, fetched if needed."""
    return _CREDENTIALS.get(
        (block_name, admin),
        lambda: _fetch(load_block(AksCluster, block_name), block_name, admin),
        fresh=refresh,
    )


def forget_credentials() -> None:
    """Drop every cached credential of this process (tests; after a rotation)."""
    _CREDENTIALS.forget()


def credentials_ref(cluster: ClusterSpec, admin: bool = True) -> CredentialRef:
    """Step 01: fetch a cluster's credentials through ARM into this process's memory.

    Idempotent (a read). Returns a reference; the credential itself stays in memory (see the
    module docstring). Needs ``listClusterAdminCredential`` (or ``listClusterUserCredential``).
    """
    block = load_block(AksCluster, cluster.aks_block)
    access = cluster_access(cluster.aks_block, admin=admin, refresh=True)
    return CredentialRef(
        aks_block=cluster.aks_block,
        cluster_name=block.cluster_name,
        server=access.server,
        auth=access.auth,
        admin=admin,
    )


class ClusterFacts(BaseModel):
    """What later steps need to know about an AKS cluster (public facts, no credentials)."""

    model_config = ConfigDict(frozen=True)
    cluster_name: str
    region: str
    fqdn: str | None
    node_resource_group: str | None
    secrets_provider_client_id: str | None
    ingress_gateway_client_id: str | None
    app_gateway_id: str | None = None
    """The App Gateway the AGIC add-on writes (``effectiveApplicationGatewayId``)."""
    agic_principal_id: str | None = None
    """The object id of the AGIC add-on's identity (``ingressapplicationgateway-<cluster>``)."""


def secrets_provider_identity(cluster: str, facts: ClusterFacts) -> str:
    """The client id the CSI driver mounts Key Vault objects as (steps 04, 20).

    Raises:
        AksError: the cluster has no Key Vault Secrets Provider add-on identity.
    """
    if not facts.secrets_provider_client_id:
        raise AksError(
            f"cluster {cluster!r} has no Key Vault Secrets Provider identity; enable the "
            "azure-keyvault-secrets-provider add-on on it (az aks enable-addons)",
            system="Azure Resource Manager", target=cluster,
        )  # fmt: skip
    return facts.secrets_provider_client_id


def _addon_client_id(addons: Any, name: str) -> str | None:
    profile = (addons or {}).get(name)
    identity = getattr(profile, "identity", None)
    return getattr(identity, "client_id", None)


def _agic(addons: Any) -> tuple[str | None, str | None]:
    """The AGIC add-on's App Gateway id and its identity's object id, where it is enabled."""
    profile = (addons or {}).get("ingressApplicationGateway")
    if profile is None or not getattr(profile, "enabled", False):
        return None, None
    config = getattr(profile, "config", None) or {}
    gateway = config.get("effectiveApplicationGatewayId") or config.get("applicationGatewayId")
    return gateway, getattr(getattr(profile, "identity", None), "object_id", None)


def cluster_facts(cluster: ClusterSpec) -> ClusterFacts:
    """Read the cluster's ARM resource: FQDN, node resource group, add-on identities.

    A read, idempotent. Needs ``Microsoft.ContainerService/managedClusters/read``.
    """
    block = load_block(AksCluster, cluster.aks_block)
    client = block.container_service_client()
    read = "Microsoft.ContainerService/managedClusters/read"
    with arm_errors(block, cluster.aks_block, read):
        mc = client.managed_clusters.get(block.resource_group, block.cluster_name)
    gateway, agic_principal = _agic(mc.addon_profiles)
    return ClusterFacts(
        cluster_name=block.cluster_name,
        region=block.region,
        fqdn=mc.fqdn,
        node_resource_group=mc.node_resource_group,
        secrets_provider_client_id=_addon_client_id(
            mc.addon_profiles, "azureKeyvaultSecretsProvider"
        ),
        ingress_gateway_client_id=_addon_client_id(mc.addon_profiles, "ingressApplicationGateway"),
        app_gateway_id=gateway,
        agic_principal_id=agic_principal,
    )


# -- The steps as Prefect tasks --------------------------------------------------------------

get_cluster_credentials = blocking_task(
    "get-cluster-credentials", task_run_name="get-cluster-credentials-{cluster.name}"
)(credentials_ref)
describe_aks_cluster = blocking_task(
    "describe-aks-cluster",
    task_run_name="describe-aks-cluster-{cluster.name}",
    cache_policy=RUN_ID + INPUTS,
)(cluster_facts)
