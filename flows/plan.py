"""The install's plan: what ``install-mesh`` would write or delete now, found by reads only.

``meshflow install --dry-run``. The same stages as the install, each reading instead of
writing: the PKI in Key Vault; per cluster, concurrently, its manifests (compared field by
field, as the apply compares them) and whether ``istioctl install`` would run; the remote
secrets each cluster would receive or lose; each ingress cluster's App Gateway. Writes nothing
(Key Vault, clusters, ARM); it takes no mesh lock, so it may run beside another run.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.runs import FLOW_OPTIONS, required_blocks
from meshflow.manifests import post_install_manifests, pre_install_manifests
from meshflow.plan import InstallPlan, PlannedChange
from meshflow.spec import ClusterSpec, MeshSpec
from tasks.aks import describe_aks_cluster, get_cluster_credentials, secrets_provider_identity
from tasks.appgateway import plan_app_gateway
from tasks.blocking import run_blocking
from tasks.istio import plan_istio_install
from tasks.keyvault import vault_facts
from tasks.kube import plan_objects, plan_remote_secrets
from tasks.pki import plan_pki, read_root_certificate
from tasks.preflight import check_blocks

__all__ = ["plan_install"]


@flow(name="plan-install", **FLOW_OPTIONS)
async def plan_install(spec: MeshSpec) -> InstallPlan:
    """List what an install of ``spec`` would write or delete; write nothing."""
    await check_blocks(required_blocks(spec))
    pki, clusters = await asyncio.gather(
        plan_pki(spec.pki_store, list(spec.clusters)),
        asyncio.gather(*(_cluster(spec, c) for c in spec.clusters)),
    )
    changes = [*pki, *(change for per in clusters for change in per)]
    notes = []
    if any(c.change == "refuse" for c in pki):
        notes.append("the install would stop at the PKI step (see the refused change)")
    elif spec.ingress.https and spec.ingress_clusters:
        if any(c.object.startswith("istio-root-ca-key") for c in pki):
            notes.append("App Gateways: planned after the root exists (a new mesh)")
        else:
            root_pem = await read_root_certificate(spec.pki_store)
            for c in spec.ingress_clusters:
                facts = await describe_aks_cluster(c)
                changes += await plan_app_gateway(c, facts, spec.key_vault_block, root_pem)
    if spec.ingress_clusters:
        notes.append(
            "the ingress objects (Gateway, VirtualService, Ingress) are planned by their own "
            "step at install time; they depend on what the gateway serves then"
        )
    plan = InstallPlan(environment=spec.environment, changes=tuple(changes), notes=tuple(notes))
    await acreate_markdown_artifact(plan.markdown(), key=f"plan-{spec.environment}")
    get_run_logger().info("plan for %s: %d changes", spec.environment, len(plan.changes))
    return plan


async def _cluster(spec: MeshSpec, c: ClusterSpec) -> list[PlannedChange]:
    """One cluster: its manifests, its Istio install, the remote secrets it would hold."""
    _, facts, vault = await asyncio.gather(
        get_cluster_credentials(c),
        describe_aks_cluster(c),
        run_blocking(vault_facts, spec.key_vault_block),
    )
    manifests = pre_install_manifests(
        spec, c, keyvault_name=vault.vault_name, tenant_id=vault.tenant_id,
        identity_client_id=secrets_provider_identity(c.name, facts),
    ) + post_install_manifests(spec, c)  # fmt: skip
    objects, istio, secrets = await asyncio.gather(
        plan_objects(c, manifests),
        plan_istio_install(spec, c),
        plan_remote_secrets(c, tuple(spec.clusters)),
    )
    return [*objects, *([istio] if istio else []), *secrets]
