"""Verify flows: prove the wiring before touching anything, and check the mesh's health.

- ``verify-access`` (:func:`verify_access`): for each cluster, concurrently, load its block,
  fetch its kubeconfig through the AKS API, list namespaces; once, write and read a probe
  secret in Key Vault (it proves write access: it is not read-only).
- ``verify-mesh`` (:func:`verify_mesh`, hourly): the installed mesh's health, by reads only
  (``docs/verify.md``). Per cluster, concurrently: its credentials and API server, every other
  cluster's remote secret stored in it (``check-remote-secrets-of-<s>``, install's own check),
  istiod's sync with its peers where istiod runs; beside them, the days left on the root, each
  intermediate and the ingress leaf in Key Vault.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel, ConfigDict

from flows.runs import FLOW_OPTIONS, required_blocks, settle
from meshflow.health import (
    CREDENTIALS,
    ISTIOD_SYNC,
    CertificateHealth,
    HealthCheck,
    MeshHealth,
    MeshUnhealthyError,
    artifact_key,
    blocked,
    credentials_check,
    failed,
    istiod_check,
    reason_of,
    remote_secret_check,
    remote_secret_name_of,
)
from meshflow.spec import ClusterSpec, MeshSpec
from tasks.aks import get_cluster_credentials
from tasks.keyvault import ProbeResult, probe_key_vault
from tasks.kube import check_istiod_sync, check_remote_secrets, count_cluster_nodes, list_namespaces
from tasks.pki import read_certificate_expiry
from tasks.preflight import check_blocks

__all__ = ["AccessReport", "MeshHealth", "verify_access", "verify_mesh"]


class ClusterAccessReport(BaseModel):
    """What verify learned about one cluster."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    server: str
    auth: str
    namespaces: int


class AccessReport(BaseModel):
    """What verify learned, as returned by the flow and shown in its artifact."""

    model_config = ConfigDict(frozen=True)
    environment: str
    clusters: tuple[ClusterAccessReport, ...]
    key_vault: ProbeResult

    def markdown(self) -> str:
        """The report as a Markdown table."""
        kv = self.key_vault
        rows = "\n".join(
            f"| {c.cluster} | {c.server} | {c.auth} | {c.namespaces} |" for c in self.clusters
        )
        return (
            f"# Access verified: {self.environment}\n\n"
            "| cluster | API server | auth | namespaces |\n|---|---|---|---|\n"
            f"{rows}\n\nKey Vault `{kv.vault}`: wrote and read `{kv.secret}` "
            f"(version {kv.version}) in {kv.round_trip_ms} ms.\n"
        )


async def _check_cluster(cluster: ClusterSpec) -> ClusterAccessReport:
    creds = await get_cluster_credentials(cluster)
    names = await list_namespaces(cluster)
    return ClusterAccessReport(
        cluster=cluster.name, server=creds.server, auth=creds.auth, namespaces=len(names)
    )


@flow(name="verify-access", **FLOW_OPTIONS)
async def verify_access(spec: MeshSpec) -> AccessReport:
    """Check that every cluster and the Key Vault of ``spec`` are reachable with their blocks.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).
    """
    await check_blocks(required_blocks(spec))
    clusters, probe = await asyncio.gather(
        asyncio.gather(*(_check_cluster(c) for c in spec.clusters)),
        probe_key_vault(spec.key_vault_block),
    )
    report = AccessReport(environment=spec.environment, clusters=tuple(clusters), key_vault=probe)
    await acreate_markdown_artifact(report.markdown(), key=f"access-{spec.environment}")
    get_run_logger().info("verified %d clusters and Key Vault %s", len(clusters), probe.vault)
    return report


# -- verify-mesh: the hourly health check, read only -------------------------------------------


@flow(name="verify-mesh", **FLOW_OPTIONS)
async def verify_mesh(spec: MeshSpec) -> MeshHealth:
    """Check the installed mesh of ``spec`` by reads only; fail when any check fails.

    1. **Blocks**: every block the spec names exists, with its type.
    2. **Per cluster, concurrently**: its credentials through the AKS API and its API server
       (``get-cluster-credentials-<c>``, ``list-namespaces-<c>``); beside them the days left on
       the root, each cluster's intermediate and the ingress leaf (``read-certificate-expiry``),
       flagged within ``spec.pki.rotation_threshold_days``, failed when expired.
    3. **Then, per cluster that answered**: every remote secret stored in it, read and its token
       used against its source exactly as istiod would (``check-remote-secrets-of-<s>``), and
       istiod's sync with its peers (``check-istiod-sync-<c>``, ``count-nodes-<c>``): "not run"
       on a cluster without nodes, never a pass; failed where nodes run but istiod does not.
    4. **Report**: artifact ``mesh-health-<env>`` (tables of checks and certificates), then the
       run fails with one line per problem, or completes (warnings and checks not run are not
       failures).

    Read only, so it takes **no** mesh lock (:func:`flows.runs.mesh_lock`): it may run beside an
    install or a rotation, and then reports what it saw at that moment (a certificate being
    reissued, a remote secret being exchanged). It writes nothing to Key Vault (unlike
    ``verify-access``'s probe secret), the clusters (the access reviews made with each remote
    secret's token persist nothing) or ARM (fetching credentials is a ``list`` action), and does
    not tag or claim its run as the mesh's. Needs what ``verify-access`` reads, certificate and
    secret get on the vaults, and read on pods and nodes.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).

    Raises:
        MeshUnhealthyError: a check failed; the message lists each problem on its own line.
    """
    await check_blocks(required_blocks(spec))
    certificates = asyncio.ensure_future(_certificates(spec))
    access = await settle({c.name: _credentials(c) for c in spec.clusters})
    answered = [c for c in spec.clusters if isinstance(access[c.name], HealthCheck)]
    remote, istiod = await asyncio.gather(
        settle({s.name: _remote_secrets(s, answered) for s in spec.clusters}),
        settle({c.name: _istiod(spec, c) for c in answered}),
    )
    checks = [row for c in spec.clusters for row in _rows(spec, c, access, remote, istiod)]
    report = MeshHealth(
        environment=spec.environment, threshold_days=spec.pki.rotation_threshold_days,
        checked_at=dt.datetime.now(dt.UTC), checks=tuple(checks),
        certificates=tuple(await certificates),
    )  # fmt: skip
    await _publish(report)
    if report.problems:
        raise MeshUnhealthyError(report.failure_message())
    return report


def _rows(
    spec: MeshSpec,
    c: ClusterSpec,
    access: Mapping[str, HealthCheck | BaseException],
    remote: Mapping[str, list[HealthCheck] | BaseException],
    istiod: Mapping[str, HealthCheck | BaseException],
) -> list[HealthCheck]:
    """``c``'s rows: its credentials, each other cluster's remote secret in it, istiod's sync."""
    rows = [_outcome(access[c.name], c.name, CREDENTIALS)]
    answered = isinstance(access[c.name], HealthCheck)
    for s in spec.clusters:
        if s.name == c.name:
            continue
        check, found = remote_secret_name_of(s.name), remote[s.name]
        if not answered:
            rows.append(blocked(c.name, check, by=c.name))
        elif isinstance(found, BaseException):
            rows.append(failed(c.name, check, reason_of(found)))
        else:
            rows += [r for r in found if r.cluster == c.name]
    if not answered:
        return [*rows, blocked(c.name, ISTIOD_SYNC, by=c.name)]
    return [*rows, _outcome(istiod[c.name], c.name, ISTIOD_SYNC)]


async def _credentials(c: ClusterSpec) -> HealthCheck:
    """Step 01 and a read: credentials through the AKS API, then the API server answers."""
    creds = await get_cluster_credentials(c)
    names = await list_namespaces(c)
    return credentials_check(c.name, server=creds.server, auth=creds.auth, namespaces=len(names))


async def _remote_secrets(source: ClusterSpec, answered: list[ClusterSpec]) -> list[HealthCheck]:
    """``source``'s remote secret in each other cluster that answered, used as istiod uses it."""
    targets = [t for t in answered if t.name != source.name]
    if not targets:
        return []
    found = await check_remote_secrets(source, targets)
    return [
        remote_secret_check(
            source=a.source, target=a.target, present=a.present, reachable=a.reachable,
            read_ok=a.read_ok, missing=a.missing, detail=a.detail,
        )
        for a in found
    ]  # fmt: skip


async def _istiod(spec: MeshSpec, c: ClusterSpec) -> HealthCheck:
    """Istiod's view of every other cluster of the spec, judged by whether pods can run."""
    peers = tuple(n for n in spec.cluster_names if n != c.name)
    sync, nodes = await asyncio.gather(
        check_istiod_sync(c, spec.istio_revision, peers), count_cluster_nodes(c)
    )
    return istiod_check(c.name, status=sync.status, detail=sync.detail, nodes=nodes)


async def _certificates(spec: MeshSpec) -> list[CertificateHealth]:
    """The certificates' rows; a Key Vault that cannot be read is one failed row."""
    try:
        return await read_certificate_expiry(spec.pki_store, spec.clusters)
    except Exception as exc:  # reported as a problem of the run, beside the clusters' checks
        return [
            CertificateHealth(
                object="mesh PKI", cluster="mesh", status="failed",
                detail=f"cannot read the certificates: {reason_of(exc)}",
            )
        ]  # fmt: skip


def _outcome(outcome: HealthCheck | BaseException, cluster: str, check: str) -> HealthCheck:
    return (
        outcome if isinstance(outcome, HealthCheck) else failed(cluster, check, reason_of(outcome))
    )


async def _publish(report: MeshHealth) -> None:
    await acreate_markdown_artifact(
        report.markdown(),
        key=artifact_key(report.environment),
        description=f"Mesh health of {report.environment}: "
        + ("healthy" if report.ok else f"{len(report.problems)} problems"),
    )
    log = get_run_logger()
    for line in report.lines():
        log.info("%s", line)
