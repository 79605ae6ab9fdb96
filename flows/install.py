"""Install the mesh: steps 01-22 of ``docs/runbook.md``, for every cluster of the spec.

The stages, as the run graph shows them:

1. **Blocks**: every block the spec names exists, with its type, before anything is written;
   then the **infrastructure** (seed step 00, when the spec names a Terraform module):
   ``spec.provision`` adopts its outputs, or plans (and the run stops there, for review), or
   applies the plan when it has changes (:mod:`flows.provision`).
2. **PKI**: the root CA (``ensure-root-ca``); meanwhile Key Vault makes each cluster's next
   intermediate key (``request-intermediate-ca-<c>``) and the ingress certificates.
3. **Clusters, in parallel**: ``install-cluster-<c>`` per cluster, each as soon as the root and
   its own key are ready. A failing cluster costs the others nothing.
4. **Join**, among the clusters that installed: each one's remote secret into every other
   (``exchange-remote-secrets-from-<s>``), then checked with its own kubeconfig
   (``check-remote-secrets-of-<s>``); beside the checks, the data plane is checked where it
   runs, and reported "not run" where it cannot.
5. **Ingress**, after the join: ``expose-cluster-<c>`` on every ingress cluster that installed
   (steps 12-22, :mod:`flows.ingress`), unless the PKI stage failed.

The run then fails with the first error, if any. Idempotent: a re-run after any failure
converges, and writes nothing when nothing changed. Why it is shaped so, and what it costs:
``docs/design.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import TypeVar

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.context import FlowRunContext

from blocks import AksCluster, read_ahead
from flows.fanout import FanOut, require_cluster_deployment, run_cluster_deployment
from flows.ingress import expose_clusters
from flows.provision import Provisioned, provision
from flows.reports import ClusterIngress, ClusterInstall, MeshReport, publish_pki_report
from flows.runs import (
    FLOW_OPTIONS,
    arm_vault,
    mesh_run,
    raise_first,
    required_blocks,
    settle,
)
from meshflow.errors import InvalidError
from meshflow.infra import clusters_missing
from meshflow.manifests import post_install_manifests, pre_install_manifests
from meshflow.spec import ClusterSpec, MeshSpec, PkiStore
from tasks.aks import describe_aks_cluster, get_cluster_credentials, secrets_provider_identity
from tasks.blocking import run_blocking
from tasks.istio import fetch_istioctl, install_istio
from tasks.keyvault import ObjectRef, vault_facts
from tasks.kube import (
    Applied,
    DataPlaneCheck,
    RemoteAccess,
    apply_manifests,
    call_echoserver_across,
    check_istiod_sync,
    check_remote_secrets,
    exchange_remote_secrets,
    prune_remote_secrets,
)
from tasks.pki import (
    ensure_frontend_certificate,
    ensure_ingress_certificate,
    ensure_intermediate_ca,
    ensure_root_ca,
    request_intermediate_ca,
)
from tasks.preflight import check_blocks

__all__ = ["ClusterInstall", "MeshReport", "install_cluster", "install_mesh"]

T = TypeVar("T")


@flow(name="install-mesh", flow_run_name="install-mesh-{spec.environment}", **FLOW_OPTIONS)
async def install_mesh(spec: MeshSpec, fan_out: FanOut = "in-process") -> MeshReport:
    """Build the multi-primary mesh of ``spec``: PKI, clusters in parallel, join, ingress.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).
        fan_out: ``in-process`` runs each cluster's ``install-cluster`` as a sub-flow of this
            run; ``deployments`` starts each as a run of the ``install-cluster-<env>``
            deployment on the environment's work pool (``meshflow deploy``), linked to this run
            (:mod:`flows.fanout`).
    """
    async with mesh_run(spec.environment):
        await check_blocks(required_blocks(spec), arm_vault(spec))
        if fan_out == "deployments":
            await require_cluster_deployment(spec)
        provisioned = await _provision(spec)
        if provisioned is not None and provisioned.stop:
            return await _stopped_for_review(spec, provisioned)
        pki = spec.pki_store
        root = asyncio.ensure_future(ensure_root_ca(pki, spec.cluster_names))
        ingress = asyncio.ensure_future(_ingress_certificates(pki, root))
        installed = await _install_clusters(spec, pki, root, fan_out)
        done = {name: c for name, c in installed.items() if isinstance(c, ClusterInstall)}
        joined = await _join(spec, done)
        await asyncio.wait([ingress])
        raise_first([root.exception(), ingress.exception()])
        exposed = await expose_clusters(spec, [c for c in spec.ingress_clusters if c.name in done])
        raise_first([*installed.values(), *joined.failures, *exposed.values()])
        report = MeshReport(
            environment=spec.environment,
            revision=spec.istio_revision,
            shared_pki=(*root.result(), *ingress.result()),
            clusters=tuple(done.values()),
            remote_secrets=tuple(joined.secrets),
            removed_secrets=tuple(joined.removed),
            access=tuple(joined.access),
            data_plane=tuple(joined.data_plane),
            ingress=tuple(i for i in exposed.values() if isinstance(i, ClusterIngress)),
            infrastructure=provisioned.line() if provisioned else None,
            run_id=_run_id(),
        )
        await _publish(report)
        return report


# -- stage 0: the infrastructure ---------------------------------------------------------------


async def _provision(spec: MeshSpec) -> Provisioned | None:
    """Seed step 00 (:mod:`flows.provision`); then every cluster of the mesh must be in its outputs.

    Raises:
        InvalidError: a cluster of the spec is not in the outputs (before any write to it).
    """
    if spec.terraform is None:
        return None
    provisioned = await provision(spec, subscription_id=spec.terraform.subscription_id)
    if provisioned is None:  # no module after all
        return None
    if provisioned.outputs is not None:
        missing = clusters_missing(provisioned.outputs, spec.cluster_names, provisioned.module)
        if missing:
            raise InvalidError("\n".join(missing), system="Terraform", target=provisioned.module)
    get_run_logger().info("%s", provisioned.line())
    return provisioned


async def _stopped_for_review(spec: MeshSpec, provisioned: Provisioned) -> MeshReport:
    """``provision: plan``: the run ends after the plan's artifact, with nothing else done."""
    return MeshReport(
        environment=spec.environment, revision=spec.istio_revision, shared_pki=(), clusters=(),
        remote_secrets=(), access=(), data_plane=(), infrastructure=provisioned.line(),
        stopped=True, run_id=_run_id(),
    )  # fmt: skip


def _run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


# Its result (references only: names, versions, objects) is persisted, as JSON, so that a
# parent that started it on a worker (fan_out="deployments") reads it back.
@flow(name="install-cluster", flow_run_name="install-cluster-{cluster}",
      **(FLOW_OPTIONS | {"persist_result": True}))  # fmt: skip
async def install_cluster(spec: MeshSpec, cluster: str) -> ClusterInstall:
    """Steps 01-07, 08 (source side) and 10 on one cluster; idempotent.

    Its intermediate CA is ensured while its credentials and namespaces are set up; Istio
    waits for both (istiod mounts that CA). Takes the spec and a name, so it also runs on its
    own, as a deployment.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).
        cluster: The name of the cluster to install, one of the mesh's clusters.
    """
    c = spec.cluster(cluster)
    ca, (server, applied), istioctl = await asyncio.gather(
        ensure_intermediate_ca(spec.pki_store, c), _prepare(spec, c),
        fetch_istioctl(spec.istio_version),
    )  # fmt: skip
    istio = await install_istio(spec, c, istioctl)
    applied += await apply_manifests(c, post_install_manifests(spec, c))
    return ClusterInstall(
        cluster=c.name, server=server, ca=tuple(ca), istio=istio, applied=tuple(applied)
    )


async def _prepare(spec: MeshSpec, c: ClusterSpec) -> tuple[str, list[Applied]]:
    """Credentials (01), then namespaces and istiod's SecretProviderClass (04, 05)."""
    creds, facts, vault = await asyncio.gather(
        get_cluster_credentials(c),
        describe_aks_cluster(c),
        run_blocking(vault_facts, spec.key_vault_block),
    )
    pre = pre_install_manifests(
        spec,
        c,
        keyvault_name=vault.vault_name,
        tenant_id=vault.tenant_id,
        identity_client_id=secrets_provider_identity(c.name, facts),
    )
    return creds.server, await apply_manifests(c, pre)


# -- stage 2: the PKI the clusters do not need themselves -------------------------------------


async def _ingress_certificates(pki: PkiStore, root: Awaitable[list[ObjectRef]]) -> list[ObjectRef]:
    """Steps 16 and 19: the frontend certificate at once, the backend's once the root exists."""

    async def backend() -> ObjectRef:
        await root
        return await ensure_ingress_certificate(pki)

    return list(await asyncio.gather(ensure_frontend_certificate(pki), backend()))


# -- stage 3: clusters in parallel --------------------------------------------------------------


async def _install_clusters(
    spec: MeshSpec, pki: PkiStore, root: Awaitable[list[ObjectRef]], fan_out: FanOut
) -> dict[str, ClusterInstall | BaseException]:
    """Every cluster's sub-flow (or deployment run), each once the root and its own key are ready.

    All run to their end, failures included.
    """

    async def lane(c: ClusterSpec) -> ClusterInstall:
        # Key Vault makes the cluster's key while the root is ensured; its block is read then.
        await asyncio.gather(
            root,
            request_intermediate_ca(pki, c),
            run_blocking(read_ahead, AksCluster, [c.aks_block]),
        )
        if fan_out == "deployments":
            result = await run_cluster_deployment(spec, c.name)
            return ClusterInstall.model_validate(result)
        return await install_cluster(spec, c.name)

    return await settle({c.name: lane(c) for c in spec.clusters})


# -- stage 4: the join -------------------------------------------------------------------------


class _Joined:
    """What the join did: the remote secrets written, what they grant, the data plane."""

    def __init__(self) -> None:
        self.secrets: list[Applied] = []
        self.removed: list[Applied] = []
        self.access: list[RemoteAccess] = []
        self.data_plane: list[DataPlaneCheck] = []
        self.failures: list[BaseException] = []


async def _join(spec: MeshSpec, installed: Mapping[str, ClusterInstall]) -> _Joined:
    """Steps 08-09 and 11 among the clusters that ``installed``.

    Each installed cluster loses the remote secrets meshflow wrote for clusters no longer in the
    spec. Each source's exchange writes its remote secret into every other installed cluster; its
    check starts as soon as that exchange has ended (a secret it failed to write is reported
    missing); the data plane is checked once every exchange succeeded, beside the checks.
    """
    clusters = [c for c in spec.clusters if c.name in installed]
    others = {s.name: tuple(t for t in clusters if t.name != s.name) for s in clusters}
    sources = [s for s in clusters if others[s.name]]  # a one-cluster mesh has no remote secret
    exchanges = {
        s.name: asyncio.ensure_future(exchange_remote_secrets(s, others[s.name])) for s in sources
    }

    async def check(s: ClusterSpec) -> list[RemoteAccess]:
        await settle({s.name: exchanges[s.name]})
        return await check_remote_secrets(s, others[s.name])

    async def data_plane() -> list[DataPlaneCheck]:
        for exchange in exchanges.values():
            await exchange  # istiod finds its peers through the remote secrets
        return await _data_plane(spec, clusters)

    members = spec.cluster_names  # a cluster that left the spec: its secrets go from the others
    checked, plane, pruned = await asyncio.gather(
        settle({s.name: check(s) for s in sources}),
        settle({"data plane": data_plane()}),
        settle({c.name: prune_remote_secrets(c, members) for c in clusters}),
    )
    joined = _Joined()
    for gone in pruned.values():
        if isinstance(gone, BaseException):
            joined.failures.append(gone)
        else:
            joined.removed += gone
    for exchange in exchanges.values():
        if (failed := exchange.exception()) is not None:
            joined.failures.append(failed)
        else:
            joined.secrets += exchange.result()
    for outcome in checked.values():
        if isinstance(outcome, BaseException):
            joined.failures.append(outcome)
        else:
            joined.access += outcome
    seen = plane["data plane"]
    if isinstance(seen, BaseException):
        joined.failures.append(seen)
    else:
        joined.data_plane = seen
    return joined


async def _data_plane(spec: MeshSpec, clusters: Sequence[ClusterSpec]) -> list[DataPlaneCheck]:
    """Istiod's view of its peers on every cluster, and one cross-cluster call (11)."""
    names = tuple(c.name for c in clusters)
    sync = [
        check_istiod_sync(c, spec.istio_revision, tuple(n for n in names if n != c.name))
        for c in clusters
    ]
    callers = [c for c in clusters if not c.sample_workload][:1]
    calls = [call_echoserver_across(c) for c in callers]
    return list(await asyncio.gather(*sync, *calls))


async def _publish(report: MeshReport) -> None:
    await asyncio.gather(
        publish_pki_report(report.pki),
        acreate_markdown_artifact(report.markdown(), key=f"mesh-{report.environment}"),
    )
    get_run_logger().info(
        "mesh %s: %d clusters, %d remote secrets, %d writes, %s",
        report.environment,
        len(report.clusters),
        len(report.remote_secrets),
        report.writes,
        "control plane verified" if report.ok else "PROBLEMS: see the mesh artifact",
    )
