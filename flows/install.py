"""Install the mesh: root CA → one sub-flow per cluster, concurrently → join → validate.

Reads like the runbook (steps 01-11 of ``shared/SYSTEM.md``); each step waits only for what it
needs, so the slow cloud calls of different steps overlap:

1. ``ensure-root-ca``: the mesh's one trust anchor (02-03), before anything is signed. Beside
   it, ``request-intermediate-ca`` per cluster has Key Vault generate the cluster's next
   intermediate key where one will be needed (the slow part of 02; it needs no root), the
   frontend certificate (16) is ensured (Key Vault signs it itself), and the clusters' blocks
   are read for the sub-flows' first tasks.
2. Once the root is there: the ingress backend certificate (19) and, as soon as its own key
   waits in Key Vault too, ``install-cluster`` for each cluster: credentials (01), namespaces
   and the SecretProviderClass (04, 05) while the cluster's intermediate CA is ensured in Key
   Vault (02-03: the waiting key's CSR signed by the root, the certificate merged), then Istio
   (06, 07), which mounts that CA, the istio-reader identity (08, source side) and the sample
   workload (10). The sub-flows are async and run concurrently. Each takes ``(spec, cluster)``
   so it can also run as its own deployment on a work pool.
3. Join, all clusters: once every sub-flow has ended, each cluster's remote secret is written
   into every other cluster that installed (08, one task per source); as soon as a source's
   exchange has ended, its secret in each of those clusters is checked with the secret's own
   kubeconfig (09, one task per source; the copies are identical, so their access reviews are
   made once). N + N task runs, not 2 x N x (N - 1) as with a task per ordered pair: each task
   run costs the Prefect server tens of milliseconds of CPU (about 2 CPU-seconds for the 50 of
   a 4-cluster install). The price: the exchange waits for the slowest (or a failing)
   cluster's sub-flow to end, where a pair could start once its own two clusters were done;
   clusters finish within a second of each other, and the per-pair tasks of the last cluster
   cost more than that wait.
4. Once every exchange succeeded, beside the checks of step 3: istiod sync where istiod runs
   and the cross-cluster call (11) where there are nodes; otherwise "not run" with the reason.

A failing cluster does not stop the others: every sub-flow, and the exchange and checks among
the clusters that installed, run to the end, then the flow fails with the first error. Every
step is idempotent, so re-running after any failure (or a kill) converges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel, ConfigDict

from blocks import AksCluster, read_ahead
from flows.pki import PkiReport, publish_pki_report
from flows.runs import FLOW_OPTIONS, mesh_run, required_blocks
from meshflow.manifests import post_install_manifests, pre_install_manifests
from meshflow.spec import ClusterSpec, MeshSpec
from tasks.aks import AksError, describe_aks_cluster, get_cluster_credentials
from tasks.blocking import run_blocking
from tasks.istio import IstioInstall, install_istio
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
)
from tasks.pki import (
    ensure_frontend_certificate,
    ensure_ingress_certificate,
    ensure_intermediate_ca,
    ensure_root_ca,
    request_intermediate_ca,
)
from tasks.preflight import check_blocks

T = TypeVar("T")


class ClusterInstall(BaseModel):
    """What the per-cluster sub-flow did."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    server: str
    ca: tuple[ObjectRef, ...]
    istio: IstioInstall
    applied: tuple[Applied, ...]

    @property
    def writes(self) -> int:
        """Objects created or updated, its CA's Key Vault versions included (0 when converged)."""
        return (
            sum(o.written for o in self.ca)
            + sum(a.action != "unchanged" for a in self.applied)
            + (self.istio.action != "unchanged")
        )


class MeshReport(BaseModel):
    """The mesh after ``install-mesh``: per cluster, per remote secret, and what was not run."""

    model_config = ConfigDict(frozen=True)
    environment: str
    revision: str
    shared_pki: tuple[ObjectRef, ...]  # root, root-cert, ingress certificates (not per cluster)
    clusters: tuple[ClusterInstall, ...]
    remote_secrets: tuple[Applied, ...]
    access: tuple[RemoteAccess, ...]
    data_plane: tuple[DataPlaneCheck, ...]

    @property
    def writes(self) -> int:
        """Everything this run created or updated, PKI included."""
        return (
            sum(o.written for o in self.shared_pki)
            + sum(c.writes for c in self.clusters)
            + sum(s.action != "unchanged" for s in self.remote_secrets)
        )

    @property
    def ok(self) -> bool:
        """Control plane verified and no data-plane check failed (not-run is not failure)."""
        return all(a.read_ok for a in self.access) and all(
            d.status != "failed" for d in self.data_plane
        )

    @property
    def pki(self) -> PkiReport:
        """Every PKI object of the mesh: the shared ones and each cluster's CA."""
        per_cluster = (ref for c in self.clusters for ref in c.ca)
        return PkiReport(environment=self.environment, objects=(*self.shared_pki, *per_cluster))

    def readable_into(self, cluster: str) -> int:
        """How many remote secrets stored in ``cluster`` reach their source with reader rights."""
        return sum(a.read_ok for a in self.access if a.target == cluster)

    def markdown(self) -> str:
        """The mesh as a table: per cluster the revision, remote secrets, reader access, sync."""
        peers = len(self.clusters) - 1
        rows = []
        for c in self.clusters:
            present = sum(a.present for a in self.access if a.target == c.cluster)
            readable = self.readable_into(c.cluster)
            sync = _status(self.data_plane, c.cluster, "istiod sync")
            rows.append(
                f"| {c.cluster} | {c.istio.revision} ({c.istio.action}) | {present}/{peers} "
                f"| {readable}/{peers} | {sync} |"
            )
        not_run = [d for d in self.data_plane if d.status == "not run"]
        notes = "\n".join(f"- {d.check} on {d.cluster}: not run: {d.detail}" for d in not_run)
        others = "\n".join(
            f"- {c.cluster}: istiod of revision {', '.join(c.istio.other_revisions)} is also "
            "installed (meshflow leaves it alone; remove it with `istioctl uninstall --revision`"
            " once nothing uses it)"
            for c in self.clusters
            if c.istio.other_revisions
        )
        return (
            f"# Mesh {self.environment}: {'OK' if self.ok else 'PROBLEMS'}\n\n"
            "| cluster | Istio revision | remote secrets | reader access | istiod sync |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"Writes this run: {self.writes} (0 means nothing had changed).\n\n"
            + (f"## Not run\n{notes}\n" if notes else "")
            + (f"## Other Istio revisions\n{others}\n" if others else "")
        )


def _status(checks: Iterable[DataPlaneCheck], cluster: str, check: str) -> str:
    for d in checks:
        if d.cluster == cluster and d.check == check:
            return d.status if d.status != "not run" else f"not run: {d.detail}"
    return "-"


@flow(name="install-cluster", flow_run_name="install-cluster-{cluster}", **FLOW_OPTIONS)
async def install_cluster(spec: MeshSpec, cluster: str) -> ClusterInstall:
    """Steps 01-07, 08 (source side) and 10 on one cluster. Idempotent.

    The cluster's intermediate CA is ensured while its credentials and namespaces are set up;
    Istio waits for both, because istiod mounts that CA through the SecretProviderClass.
    """
    c = spec.cluster(cluster)
    ca, (server, applied) = await asyncio.gather(
        ensure_intermediate_ca(spec.key_vault_block, c.name, spec.pki, spec.root_key_vault_block),
        _prepare_cluster(spec, c),
    )
    istio = await install_istio(c.aks_block, c.name, spec)
    applied += await apply_manifests(c.aks_block, c.name, post_install_manifests(spec, c))
    return ClusterInstall(
        cluster=c.name, server=server, ca=tuple(ca), istio=istio, applied=tuple(applied)
    )


async def _prepare_cluster(spec: MeshSpec, c: ClusterSpec) -> tuple[str, list[Applied]]:
    """Credentials (01), then namespaces and the SecretProviderClass (04, 05)."""
    creds, facts, vault = await asyncio.gather(
        get_cluster_credentials(c.aks_block),
        describe_aks_cluster(c.aks_block),
        run_blocking(vault_facts, spec.key_vault_block),
    )
    if not facts.secrets_provider_client_id:
        raise AksError(
            f"cluster {c.name!r} has no Key Vault Secrets Provider identity; enable the "
            "azure-keyvault-secrets-provider add-on (the Terraform module does)"
        )
    pre = pre_install_manifests(
        spec,
        c,
        keyvault_name=vault.vault_name,
        tenant_id=vault.tenant_id,
        identity_client_id=facts.secrets_provider_client_id,
    )
    return creds.server, await apply_manifests(c.aks_block, c.name, pre)


async def _after(
    ready: Sequence[Awaitable[Any]], step: Callable[..., Awaitable[T]], *args: Any
) -> T:
    """``step(*args)`` once everything in ``ready`` is done; a failure there is raised instead."""
    for prerequisite in ready:
        await prerequisite
    return await step(*args)


async def _succeeded(step: Awaitable[Any]) -> bool:
    """Whether ``step`` ends without an error (the flow raises that error, not this)."""
    try:
        await step
    except Exception:
        return False
    return True


async def _installed_others(
    spec: MeshSpec, installed: Mapping[str, Awaitable[ClusterInstall]], cluster: ClusterSpec
) -> list[ClusterSpec]:
    """The clusters other than ``cluster`` whose sub-flows ended without an error."""
    return [
        c for c in spec.clusters if c.name != cluster.name and await _succeeded(installed[c.name])
    ]


async def _exchange_from(
    spec: MeshSpec, installed: Mapping[str, Awaitable[ClusterInstall]], source: ClusterSpec
) -> list[Applied]:
    """Step 08 from ``source`` into every other cluster that installed, once all have ended."""
    await installed[source.name]
    targets = [(t.aks_block, t.name) for t in await _installed_others(spec, installed, source)]
    if not targets:  # a one-cluster mesh has no remote secret
        return []
    return await exchange_remote_secrets(source.aks_block, source.name, targets)


async def _check_from(
    spec: MeshSpec,
    installed: Mapping[str, Awaitable[ClusterInstall]],
    exchanged: Mapping[str, Awaitable[list[Applied]]],
    source: ClusterSpec,
) -> list[RemoteAccess]:
    """Step 09 for ``source``: its secret in every other installed cluster, once its exchange ended.

    A secret that the exchange failed to write is reported missing here.
    """
    await installed[source.name]
    targets = [(t.aks_block, t.name) for t in await _installed_others(spec, installed, source)]
    await _succeeded(exchanged[source.name])  # ended, either way
    if not targets:
        return []
    return await check_remote_secrets(source.name, targets)


async def _data_plane(spec: MeshSpec) -> list[DataPlaneCheck]:
    """The istiod sync check on every cluster and one cross-cluster call (11), or "not run"."""
    names = [c.name for c in spec.clusters]
    sync = [
        check_istiod_sync(
            c.aks_block, c.name, spec.istio_revision, [n for n in names if n != c.name]
        )
        for c in spec.clusters
    ]
    callers = [c for c in spec.clusters if not c.sample_workload][:1]
    calls = [call_echoserver_across(c.aks_block, c.name) for c in callers]
    return list(await asyncio.gather(*sync, *calls))


async def _settled(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every one of ``futures``, then raise the first failure.

    ``asyncio.gather`` would raise at the first failure and leave the other sub-flows running
    unattended; here a failing cluster costs the others nothing, and a cancelled flow cancels
    what it started.
    """
    try:
        await asyncio.wait(futures)
    except asyncio.CancelledError:
        for f in futures:
            f.cancel()
        raise
    failures = [exc for f in futures if (exc := f.exception()) is not None]  # all retrieved
    if failures:
        raise failures[0]


@flow(name="install-mesh", **FLOW_OPTIONS)
async def install_mesh(spec: MeshSpec) -> MeshReport:
    """Build the multi-primary mesh of ``spec``: root CA, clusters in parallel, join, validate."""
    async with mesh_run(spec.environment):
        await check_blocks(required_blocks(spec))
        return await _install(spec)


async def _install(spec: MeshSpec) -> MeshReport:
    logger = get_run_logger()
    kv, root_kv, settings = spec.key_vault_block, spec.root_key_vault_block, spec.pki
    names = [c.name for c in spec.clusters]
    # The sub-flows' first tasks need the clusters' blocks: read them while the root is made.
    blocks = asyncio.ensure_future(
        run_blocking(read_ahead, AksCluster, [c.aks_block for c in spec.clusters])
    )
    root = asyncio.ensure_future(ensure_root_ca(kv, names, settings, root_kv))
    keys = {
        n: asyncio.ensure_future(request_intermediate_ca(kv, n, settings, root_kv)) for n in names
    }
    installs = {n: asyncio.ensure_future(_after([root, keys[n]], install_cluster, spec, n))
                for n in names}  # fmt: skip
    ingress = asyncio.ensure_future(
        _after([root], ensure_ingress_certificate, kv, settings, root_kv)
    )
    frontend = asyncio.ensure_future(  # self-signed by Key Vault: needs no root
        ensure_frontend_certificate(kv, settings, spec.frontend_pfx_block)
    )
    exchanges = {c.name: asyncio.ensure_future(_exchange_from(spec, installs, c))
                 for c in spec.clusters}  # fmt: skip
    checks = [asyncio.ensure_future(_check_from(spec, installs, exchanges, c))
              for c in spec.clusters]  # fmt: skip
    # istiod finds its peers through the remote secrets: the data plane is checked once every
    # exchange succeeded, beside the reader-access checks (a separate verification).
    data_plane = asyncio.ensure_future(_after(list(exchanges.values()), _data_plane, spec))
    await _settled([blocks, root, *keys.values(), *installs.values(), ingress, frontend,
                    *exchanges.values(), *checks, data_plane])  # fmt: skip
    clusters = [installs[c.name].result() for c in spec.clusters]
    secrets = [s for c in spec.clusters for s in exchanges[c.name].result()]
    access = [a for check in checks for a in check.result()]
    report = MeshReport(
        environment=spec.environment,
        revision=spec.istio_revision,
        shared_pki=(*root.result(), ingress.result(), frontend.result()),
        clusters=tuple(clusters),
        remote_secrets=tuple(secrets),
        access=tuple(access),
        data_plane=tuple(data_plane.result()),
    )
    await asyncio.gather(
        publish_pki_report(report.pki),
        acreate_markdown_artifact(report.markdown(), key=f"mesh-{spec.environment}"),
    )
    logger.info(
        "mesh %s: %d clusters, %d remote secrets, %d writes, %s",
        spec.environment,
        len(clusters),
        len(secrets),
        report.writes,
        "control plane verified" if report.ok else "PROBLEMS: see the mesh artifact",
    )
    return report
