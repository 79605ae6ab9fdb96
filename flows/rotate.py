"""Rotate the mesh's certificates (same root): the flow a schedule runs.

1. **Check the inputs and blocks**, before anything is written.
2. **Per cluster, concurrently**: reissue its intermediate CA when it expires within the
   threshold, is forced, or is not signed by the current root (``rotate-intermediate-ca-<c>``:
   key first, then the chain); beside them, the ingress backend certificate the same way, and
   the frontend certificate's renewal by Key Vault and its unversioned reference in every
   ingress cluster's App Gateway.
3. **Reach the pods**: wait (bounded by ``spec.rotation.mount_wait_seconds``) until every
   ``SecretProviderClassPodStatus`` of istiod (and of the ingress gateway) lists the new
   versions, then restart ``istiod-<rev>`` only where it did not start with the plug-in CA, or
   where the wait timed out and ``spec.rotation.restart_istiod_on_timeout``. Without pods
   (the sandbox) these report "not run: no pods".
4. **Report**: a table artifact (``rotation-<env>``), events for each certificate and for the
   run (``meshflow.certificate.*``, ``meshflow.rotation.completed``/``failed``), and the
   failure, if any.

Idempotent: with the default threshold a second run writes nothing; a forced run's retries
keep the versions it issued. ``dry_run`` reads only and reports what would be written.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.runtime import flow_run

from flows.runs import FLOW_OPTIONS, mesh_run, raise_first, required_blocks, settle
from meshflow.appgateway import is_unversioned
from meshflow.errors import MeshflowError
from meshflow.manifests import INGRESS_CERTIFICATE, INGRESS_NAMESPACE, ISTIO_NAMESPACE
from meshflow.rotation import (
    CertificateRotation,
    FrontendCheck,
    IstiodRestart,
    MountCheck,
    RotationPolicy,
    RotationReport,
    mount_ids,
    outcome_event,
    rotation_events,
)
from meshflow.spec import ClusterSpec, MeshSpec
from tasks.aks import describe_aks_cluster
from tasks.appgateway import read_frontend_reference
from tasks.events import emit
from tasks.kube import restart_istiod_where_needed, wait_for_mounts
from tasks.pki import (
    check_frontend_renewal,
    read_root_certificate,
    rotate_ingress_certificate,
    rotate_intermediate_ca,
    with_threshold,
)
from tasks.preflight import check_blocks

__all__ = ["rotate_certificates"]


@flow(name="rotate-certificates", **FLOW_OPTIONS)
async def rotate_certificates(
    spec: MeshSpec, threshold_days: int | None = None, force: bool = False, dry_run: bool = False
) -> RotationReport:
    """Reissue the intermediates and the ingress certificate that are due, and roll them out.

    Needs what the PKI flow needs, plus read on the clusters' Deployments, ConfigMaps and
    SecretProviderClassPodStatuses, and patch on ``istiod-<rev>``.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).
        threshold_days: Reissue a certificate this many days or fewer before it expires
            (empty: the mesh's ``pki.rotation_threshold_days``).
        force: Reissue every certificate once this run, due or not.
        dry_run: Report what would be reissued and write nothing.
    """
    policy = RotationPolicy(
        threshold_days=threshold_days or spec.pki.rotation_threshold_days,
        forced_by=str(flow_run.id or "local") if force else None,
        dry_run=dry_run,
    )
    with_threshold(spec.pki_store, policy.threshold_days)  # a bad threshold fails here
    async with mesh_run(spec.environment):
        await check_blocks(required_blocks(spec))
        try:
            report, failures = await _rotate(spec, policy)
        except Exception as exc:
            emit([outcome_event(spec.environment, [_brief(exc)], dry_run=dry_run)])
            raise
        emit(rotation_events(report))
        await _publish(report)
        raise_first(failures)
        return report


async def _rotate(
    spec: MeshSpec, policy: RotationPolicy
) -> tuple[RotationReport, list[BaseException]]:
    pki = spec.pki_store
    root_pem = await read_root_certificate(pki)  # also: no root, no rotation (install first)
    lanes = settle({c.name: _cluster(spec, c, policy, root_pem) for c in spec.clusters})
    ingress, frontend, clusters = await asyncio.gather(
        _ingress(spec, policy), _frontend(spec), lanes
    )
    rows: list[CertificateRotation] = []
    mounts: list[MountCheck] = []
    restarts: list[IstiodRestart] = []
    failures: list[BaseException] = []
    for name, outcome in clusters.items():
        if isinstance(outcome, BaseException):
            failures.append(outcome)
            rows.append(_failed(f"{name}-ca-cert", name, outcome))
        else:
            rows += outcome[0]
            mounts.append(outcome[1])
            restarts.append(outcome[2])
    leaf, leaf_mounts = ingress
    if isinstance(leaf, BaseException):
        failures.append(leaf)
        rows.append(_failed(INGRESS_CERTIFICATE, "mesh", leaf))
    else:
        rows.append(leaf)
    mounts += leaf_mounts
    report = RotationReport(
        environment=spec.environment, dry_run=policy.dry_run,
        threshold_days=policy.threshold_days, forced=policy.forced_by is not None,
        certificates=tuple(rows), frontend=frontend, mounts=tuple(mounts),
        restarts=tuple(restarts),
    )  # fmt: skip
    return report, failures


async def _cluster(
    spec: MeshSpec, c: ClusterSpec, policy: RotationPolicy, root_pem: str
) -> tuple[list[CertificateRotation], MountCheck, IstiodRestart]:
    """One cluster: its intermediate, istiod's mounts, and a restart where needed."""
    rows = await rotate_intermediate_ca(spec.pki_store, c, policy)
    expected = mount_ids(rows)
    wait = 0.0 if policy.dry_run else spec.rotation.mount_wait_seconds
    mounts = await wait_for_mounts(c, ISTIO_NAMESPACE, expected, wait)
    restart = await restart_istiod_where_needed(
        c, spec.istio_revision, root_pem, mounts_stale=mounts.status == "stale",
        restart_on_timeout=spec.rotation.restart_istiod_on_timeout,
        run_id=str(flow_run.id or "local"), dry_run=policy.dry_run,
    )  # fmt: skip
    return rows, mounts, restart


async def _ingress(
    spec: MeshSpec, policy: RotationPolicy
) -> tuple[CertificateRotation | BaseException, list[MountCheck]]:
    """The ingress backend certificate, then the gateways' mounts of it."""
    try:
        row = await rotate_ingress_certificate(spec.pki_store, policy)
    except Exception as exc:  # reported in the table and raised at the end
        return exc, []
    wait = 0.0 if policy.dry_run else spec.rotation.mount_wait_seconds
    mounts = await asyncio.gather(
        *(wait_for_mounts(c, INGRESS_NAMESPACE, mount_ids([row]), wait)
          for c in spec.ingress_clusters)
    )  # fmt: skip
    return row, list(mounts)


async def _frontend(spec: MeshSpec) -> FrontendCheck:
    """Key Vault's renewal of the frontend certificate, and how each App Gateway references it."""
    check = await check_frontend_renewal(spec.pki_store)
    if not spec.ingress.https or not spec.ingress_clusters:
        return check

    async def reference(c: ClusterSpec) -> str | None:
        return await read_frontend_reference(c, await describe_aks_cluster(c))

    found = await asyncio.gather(*(reference(c) for c in spec.ingress_clusters))
    unversioned = tuple(c.name for c, ref in zip(spec.ingress_clusters, found, strict=True)
                        if ref and is_unversioned(ref))  # fmt: skip
    pinned = tuple(c.name for c, ref in zip(spec.ingress_clusters, found, strict=True)
                   if ref and not is_unversioned(ref))  # fmt: skip
    detail = check.detail
    if pinned:
        detail += f"; pinned to one version on {', '.join(pinned)}: run `meshflow expose`"
    return check.model_copy(update={"unversioned": unversioned, "pinned": pinned, "detail": detail})


def _failed(obj: str, cluster: str, exc: BaseException) -> CertificateRotation:
    return CertificateRotation(object=obj, cluster=cluster, action="failed", reason=_brief(exc))


def _brief(exc: BaseException) -> str:
    # meshflow's errors carry no secret (tasks' boundaries); anything else is named by type.
    return str(exc) if isinstance(exc, MeshflowError) else type(exc).__name__


async def _publish(report: RotationReport) -> None:
    await acreate_table_artifact(
        report.table(),
        key=f"rotation-{report.environment}",
        description=f"Certificate rotation of {report.environment}: " + report.lines()[-1].strip(),
    )
    log = get_run_logger()
    for line in report.lines():
        log.info("%s", line)
