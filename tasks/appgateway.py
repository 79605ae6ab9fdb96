"""The App Gateway of an ingress cluster (steps 12, 17, 18), through ARM: tasks.

The gateway is the one the cluster's AGIC add-on writes (its ``effectiveApplicationGatewayId``).
meshflow reads its public endpoint, gives it the identity ``appgw-id`` (with the AGIC identity
allowed to use it, and secret get on the mesh vault), and adds its two certificates by a
read-modify-write guarded by the gateway's etag (``If-Match``): two runs, or a run and AGIC,
never drop each other's changes; a 412 means someone wrote in between, and the step reads
again. What to change is decided by :mod:`meshflow.appgateway`, by name and content: an
unchanged gateway, identity, role assignment or access policy costs no write.

Needs on the gateway's resource group: ``Microsoft.Network/applicationGateways/read`` and
``write``, ``Microsoft.Network/publicIPAddresses/read``,
``Microsoft.ManagedIdentity/userAssignedIdentities/read``, ``write`` and ``*/assign/action``
(ARM checks it when the gateway is given the identity), ``Microsoft.Authorization/
roleAssignments/read`` and ``write`` on the identity, and ``Microsoft.KeyVault/vaults/read``
and ``accessPolicies/write`` on the mesh vault (a vault with Azure RBAC authorization ignores
access policies: grant ``appgw-id`` "Key Vault Secrets User" there instead).
"""

from __future__ import annotations

import time
import uuid
from contextlib import AbstractContextManager
from typing import Any, Literal

from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters
from azure.mgmt.keyvault.models import (
    AccessPolicyEntry,
    AccessPolicyUpdateKind,
    Permissions,
    VaultAccessPolicyParameters,
    VaultAccessPolicyProperties,
)
from azure.mgmt.msi.models import Identity
from azure.mgmt.network.models import ApplicationGateway
from pydantic import BaseModel, ConfigDict

from blocks import AksCluster, KeyVault, load_block
from blocks import block_name as saved_name
from meshflow import appgateway as agw
from meshflow.errors import ConflictError, NotFoundError
from meshflow.manifests.ingress import (
    ECHOSERVER_HOST,
    HEALTH_PROBE_PORT,
    http_ingress,
    tls_ingress,
)
from meshflow.plan import PlannedChange
from meshflow.spec import ClusterSpec
from tasks.aks import AksError, ClusterFacts
from tasks.blocking import blocking_task
from tasks.kube import AGIC_DEPLOYMENT, DataPlaneCheck, ingress_ip_of
from tasks.sdk_errors import azure_errors

WRITE_ATTEMPTS = 5
"""Read-modify-write rounds before a gateway that keeps changing under us is an error."""


class GatewayEndpoint(BaseModel):
    """Where an ingress cluster's App Gateway is, and its public address."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    gateway_id: str
    public_ip_id: str
    ip: str


class ArmChange(BaseModel):
    """One ARM object meshflow ensured, and whether it wrote it."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    object: str
    action: Literal["created", "updated", "unchanged"]


def _arm(
    block: AksCluster, cluster: ClusterSpec, action: str, scope: str
) -> AbstractContextManager[None]:
    """The ARM error boundary for a call about ``cluster``'s ingress; a 403 names ``action``."""
    return azure_errors(
        "Azure Resource Manager", f"cluster {cluster.name!r} ingress ({scope})",
        permission=f"the {action} permission on {scope}", credentials=saved_name(block.credentials),
    )  # fmt: skip


def _gateway_of(cluster: ClusterSpec, facts: ClusterFacts) -> tuple[AksCluster, str]:
    """The cluster's block and the App Gateway its AGIC add-on writes (from ``facts``)."""
    block = load_block(AksCluster, cluster.aks_block)
    gateway_id = facts.app_gateway_id
    if not gateway_id:
        raise AksError(
            f"cluster {cluster.name!r} has no App Gateway: enable its AGIC add-on "
            "(ingress-appgw) or set ingress: false for it",
            system="Azure Resource Manager", target=cluster.name,
        )  # fmt: skip
    return block, gateway_id


def _read(block: AksCluster, cluster: ClusterSpec, gateway_id: str) -> tuple[agw.Json, str]:
    sub, group, name = agw.parse_resource_id(gateway_id)
    read = "Microsoft.Network/applicationGateways/read"
    with _arm(block, cluster, read, f"App Gateway {name} (resource group {group})"):
        gateway = block.network_client(sub).application_gateways.get(group, name)
    body: agw.Json = gateway.as_dict()  # the REST shape (the model is that JSON), etag included
    return body, str(body.get("etag") or "")


def gateway_endpoint(cluster: ClusterSpec, facts: ClusterFacts) -> GatewayEndpoint:
    """Step 12: the public IP of the cluster's App Gateway (frontend IP configuration).

    A read. Raises :class:`~tasks.aks.AksError` when the gateway has no public frontend.
    """
    block, gateway_id = _gateway_of(cluster, facts)
    gateway, _ = _read(block, cluster, gateway_id)
    public_ip_id = agw.frontend_public_ip_id(gateway)
    if public_ip_id is None:
        raise AksError(
            f"cluster {cluster.name!r}: App Gateway {gateway_id} has no public frontend IP "
            "configuration; give it one (the Terraform module does)",
            system="Azure Resource Manager", target=cluster.name,
        )  # fmt: skip
    sub, group, name = agw.parse_resource_id(public_ip_id)
    read = "Microsoft.Network/publicIPAddresses/read"
    with _arm(block, cluster, read, f"public IP {name} (resource group {group})"):
        address = block.network_client(sub).public_ip_addresses.get(group, name)
    if not address.ip_address:
        raise AksError(
            f"cluster {cluster.name!r}: public IP {public_ip_id} has no address yet",
            system="Azure Resource Manager", target=cluster.name,
        )  # fmt: skip
    return GatewayEndpoint(cluster=cluster.name, gateway_id=gateway_id,
                           public_ip_id=public_ip_id, ip=str(address.ip_address))  # fmt: skip


def _identity(block: AksCluster, cluster: ClusterSpec, gateway_id: str) -> tuple[Any, ArmChange]:
    sub, group, _ = agw.parse_resource_id(gateway_id)
    identities = block.identity_client(sub).user_assigned_identities
    scope = f"resource group {group}"
    try:
        with _arm(block, cluster, "Microsoft.ManagedIdentity/userAssignedIdentities/read", scope):
            found = identities.get(group, agw.GATEWAY_IDENTITY)
        change: Literal["created", "unchanged"] = "unchanged"
    except NotFoundError:
        gateway, _ = _read(block, cluster, gateway_id)
        location = str(gateway.get("location") or block.region)
        write = "Microsoft.ManagedIdentity/userAssignedIdentities/write"
        with _arm(block, cluster, write, scope):
            found = identities.create_or_update(
                group,
                agw.GATEWAY_IDENTITY,
                Identity(location=location, tags={"managed-by": "meshflow"}),
            )
        change = "created"
    return found, ArmChange(cluster=cluster.name, object=f"identity {agw.GATEWAY_IDENTITY}",
                            action=change)  # fmt: skip


def _role_assignment(
    block: AksCluster, cluster: ClusterSpec, identity_id: str, principal: str
) -> ArmChange:
    sub, _, _ = agw.parse_resource_id(identity_id)
    assignments = block.authorization_client(sub).role_assignments
    role = (
        f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/"
        f"{agw.MANAGED_IDENTITY_OPERATOR}"
    )
    # A name derived from what it grants: a re-run finds it instead of adding another.
    name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{identity_id.lower()}|{principal}|{role}"))
    what = f"role assignment Managed Identity Operator for AGIC on {agw.GATEWAY_IDENTITY}"
    scope = f"identity {agw.GATEWAY_IDENTITY}"
    try:
        with _arm(block, cluster, "Microsoft.Authorization/roleAssignments/read", scope):
            assignments.get(identity_id, name)
        return ArmChange(cluster=cluster.name, object=what, action="unchanged")
    except NotFoundError:
        with _arm(block, cluster, "Microsoft.Authorization/roleAssignments/write", scope):
            assignments.create(
                identity_id,
                name,
                RoleAssignmentCreateParameters(
                    role_definition_id=role,
                    principal_id=principal,
                    principal_type="ServicePrincipal",
                ),
            )
    return ArmChange(cluster=cluster.name, object=what, action="created")


def _access_policy(vault: KeyVault, cluster: ClusterSpec, principal: str, tenant: str) -> ArmChange:
    client = vault.management_client()
    group = str(vault.resource_group)
    what = f"Key Vault {vault.vault_name!r} access policy: secret get for {agw.GATEWAY_IDENTITY}"
    with _vault_arm(vault, "Microsoft.KeyVault/vaults/read"):
        current = client.vaults.get(group, vault.vault_name)
    for entry in current.properties.access_policies or ():
        secrets = [str(getattr(s, "value", s)).lower() for s in entry.permissions.secrets or ()]
        if entry.object_id == principal and "get" in secrets:
            return ArmChange(cluster=cluster.name, object=what, action="unchanged")
    with _vault_arm(vault, "Microsoft.KeyVault/vaults/accessPolicies/write"):
        client.vaults.update_access_policy(
            group,
            vault.vault_name,
            AccessPolicyUpdateKind.ADD,
            VaultAccessPolicyParameters(
                properties=VaultAccessPolicyProperties(
                    access_policies=[
                        AccessPolicyEntry(
                            tenant_id=tenant, object_id=principal,
                            permissions=Permissions(secrets=["get"]),
                        )
                    ]
                )
            ),
        )  # fmt: skip
    return ArmChange(cluster=cluster.name, object=what, action="created")


def _vault_arm(vault: KeyVault, action: str) -> AbstractContextManager[None]:
    """The ARM error boundary for the mesh vault's resource; a 403 names ``action``."""
    where = f"Key Vault {vault.vault_name!r} (resource group {vault.resource_group!r})"
    return azure_errors(
        "Azure Resource Manager", where, permission=f"the {action} permission on {where}",
        credentials=saved_name(vault.credentials),
    )  # fmt: skip


def ensure_gateway(
    cluster: ClusterSpec, facts: ClusterFacts, key_vault_block: str, root_pem: str
) -> list[ArmChange]:
    """Steps 17-18 on the cluster's App Gateway; idempotent (a second run writes nothing).

    The identity ``appgw-id`` (created in the gateway's resource group if absent), the
    "Managed Identity Operator" role for the AGIC add-on's identity over it, secret get for it
    on the mesh vault, then on the gateway: that identity, the SSL certificate
    ``frontend-certificate`` by the vault's unversioned secret id, and the trusted root
    ``root-certificate`` = ``root_pem`` (the Istio root). The gateway is written by
    read-modify-write with ``If-Match``; a 412 is re-read and tried again.

    Raises:
        ConflictError: the gateway changed under every one of :data:`WRITE_ATTEMPTS` writes.
    """
    block, gateway_id = _gateway_of(cluster, facts)
    vault = load_block(KeyVault, key_vault_block)
    tenant = vault.tenant_id or vault.credentials.tenant_id or ""
    if not facts.agic_principal_id:
        raise AksError(
            f"cluster {cluster.name!r}: its AGIC add-on has no identity "
            "(ingressapplicationgateway-<cluster>); re-enable the ingress-appgw add-on",
            system="Azure Resource Manager", target=cluster.name,
        )  # fmt: skip
    identity, identity_change = _identity(block, cluster, gateway_id)
    changes = [identity_change]
    changes.append(_role_assignment(block, cluster, str(identity.id), facts.agic_principal_id))
    changes.append(_access_policy(vault, cluster, str(identity.principal_id), tenant))
    changes.append(
        _write_certificates(block, cluster, gateway_id, str(identity.id), vault, root_pem)
    )
    return changes


def _write_certificates(
    block: AksCluster,
    cluster: ClusterSpec,
    gateway_id: str,
    identity_id: str,
    vault: KeyVault,
    root_pem: str,
) -> ArmChange:
    secret_id = agw.unversioned_secret_id(vault.url)
    sub, group, name = agw.parse_resource_id(gateway_id)
    what = f"App Gateway {name}: certificates and identity"
    wrote, attempts = False, 0
    while True:  # read, and write what is missing, until ARM holds it (read back)
        gateway, etag = _read(block, cluster, gateway_id)
        if not agw.missing(gateway, identity_id=identity_id, secret_id=secret_id,
                           root_pem=root_pem):  # fmt: skip
            return ArmChange(cluster=cluster.name, object=what,
                             action="updated" if wrote else "unchanged")  # fmt: skip
        if attempts == WRITE_ATTEMPTS:
            break
        attempts += 1
        body = agw.with_meshflow_parts(gateway, identity_id=identity_id, secret_id=secret_id,
                                       root_pem=root_pem)  # fmt: skip
        try:
            write = "Microsoft.Network/applicationGateways/write"
            with _arm(block, cluster, write, f"App Gateway {name} (resource group {group})"):
                block.network_client(sub).application_gateways.begin_create_or_update(
                    group, name, ApplicationGateway(body), headers={"If-Match": etag}
                ).result()
            wrote = True
        except ConflictError:  # 412: written in between (AGIC, or another run): read again
            continue
    raise ConflictError(
        f"cluster {cluster.name!r}: App Gateway {name} changed under each of {WRITE_ATTEMPTS} "
        "writes; the step is retried",
        system="Azure Resource Manager", target=cluster.name, object=name,
    )  # fmt: skip


def agic_reconciled(
    cluster: ClusterSpec,
    facts: ClusterFacts,
    *,
    ip: str,
    tls: bool,
    controller_ready: bool,
    wait_seconds: float,
) -> list[DataPlaneCheck]:
    """What AGIC made of the Ingress: the App Gateway it wrote, and the Ingress's status. A read.

    Waits up to ``wait_seconds`` for both: over HTTPS a listener using ``frontend-certificate``,
    backend settings for the echoserver trusting ``root-certificate`` and a probe on port
    8443 path ``/`` (over HTTP a listener and a rule); and the Ingress status naming the App
    Gateway's public ``ip`` (a different address is reported, not guessed around). "not run"
    when no AGIC controller runs (the sandbox: no nodes).
    """
    name = cluster.name
    if not controller_ready:
        detail = f"no ingress controller ({AGIC_DEPLOYMENT} in kube-system has no ready pod)"
        return [
            DataPlaneCheck(cluster=name, check="AGIC reconciled", status="not run", detail=detail),
            DataPlaneCheck(cluster=name, check="Ingress status", status="not run", detail=detail),
        ]
    block, gateway_id = _gateway_of(cluster, facts)
    ingress = tls_ingress() if tls else http_ingress()
    deadline = time.monotonic() + wait_seconds
    while True:
        gateway, _ = _read(block, cluster, gateway_id)
        problems = (
            agw.agic_problems(gateway, backend_host=ECHOSERVER_HOST, probe_port=HEALTH_PROBE_PORT)
            if tls
            else agw.agic_http_problems(gateway)
        )
        mismatch = agw.endpoint_problem(ip, ingress_ip_of(cluster, ingress))
        left = deadline - time.monotonic()
        if (not problems and mismatch is None) or left <= 0:
            break
        time.sleep(min(5.0, left))
    waited = f" after {wait_seconds:g} s" if problems or mismatch else ""
    return [
        DataPlaneCheck(
            cluster=name, check="AGIC reconciled", status="failed" if problems else "passed",
            detail="; ".join(problems) + waited if problems else "listener, settings and probe",
        ),
        DataPlaneCheck(
            cluster=name, check="Ingress status", status="failed" if mismatch else "passed",
            detail=(mismatch + waited) if mismatch else f"{ip}, as ARM says",
        ),
    ]  # fmt: skip


# -- The steps as Prefect tasks --------------------------------------------------------------


def plan_gateway(
    cluster: ClusterSpec, facts: ClusterFacts, key_vault_block: str, root_pem: str
) -> list[PlannedChange]:
    """What :func:`ensure_gateway` would write on the cluster's App Gateway now. Reads only.

    The identity (absent: created), and the gateway's three parts :func:`meshflow.appgateway.
    missing` names; the role assignment and the vault's access policy are checked by the write
    itself and are not listed.
    """
    block, gateway_id = _gateway_of(cluster, facts)
    sub, group, name = agw.parse_resource_id(gateway_id)
    identities = block.identity_client(sub).user_assigned_identities
    changes = []
    try:
        with _arm(block, cluster, "Microsoft.ManagedIdentity/userAssignedIdentities/read",
                  f"resource group {group}"):  # fmt: skip
            identity_id = str(identities.get(group, agw.GATEWAY_IDENTITY).id)
    except NotFoundError:
        identity_id = (
            f"/subscriptions/{sub}/resourceGroups/{group}/providers/"
            f"Microsoft.ManagedIdentity/userAssignedIdentities/{agw.GATEWAY_IDENTITY}"
        )
        changes.append(PlannedChange(system="App Gateway", target=cluster.name,
                                     object=f"identity {agw.GATEWAY_IDENTITY}", change="create",
                                     reason="the gateway reads the vault with it"))  # fmt: skip
    vault = load_block(KeyVault, key_vault_block)
    gateway, _ = _read(block, cluster, gateway_id)
    secret_id = agw.unversioned_secret_id(vault.url)
    lacking = agw.missing(gateway, identity_id=identity_id, secret_id=secret_id, root_pem=root_pem)
    if lacking:
        reason = ", ".join(lacking) + " missing or different"
        changes.append(PlannedChange(system="App Gateway", target=cluster.name,
                                     object=f"App Gateway {name}", change="update",
                                     reason=reason))  # fmt: skip
    return changes


def frontend_reference(cluster: ClusterSpec, facts: ClusterFacts) -> str | None:
    """The secret id the cluster's App Gateway serves ``frontend-certificate`` from; a read.

    None when the gateway has no such SSL certificate (step 17 has not run).
    """
    block, gateway_id = _gateway_of(cluster, facts)
    gateway, _ = _read(block, cluster, gateway_id)
    return agw.frontend_secret_id(gateway)


read_gateway_endpoint = blocking_task(
    "read-gateway-endpoint", task_run_name="read-gateway-endpoint-{cluster.name}"
)(gateway_endpoint)
ensure_app_gateway = blocking_task(
    "ensure-app-gateway", task_run_name="ensure-app-gateway-{cluster.name}"
)(ensure_gateway)
check_agic = blocking_task("check-agic", task_run_name="check-agic-{cluster.name}", retry=False)(
    agic_reconciled
)
read_frontend_reference = blocking_task(
    "read-frontend-reference", task_run_name="read-frontend-reference-{cluster.name}"
)(frontend_reference)
plan_app_gateway = blocking_task(
    "plan-app-gateway", task_run_name="plan-app-gateway-{cluster.name}"
)(plan_gateway)
