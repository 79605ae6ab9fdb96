"""Rotate the mesh root CA without downtime: a resumable three-phase flow.

1. **Trust both roots**: ``root-cert`` = the old bundle byte for byte + the new root, in every
   cluster (through the CSI mount of ``root-cert.pem``) and in every ingress cluster's App
   Gateway; intermediates still come from the old root.
2. **Issue from the new root**: the new root becomes the mesh root; every cluster's
   intermediate and the ingress leaf are reissued under it; both roots still trusted.
3. **Trust only the new root** everywhere.

Each phase completes in **all** clusters (the pods' mounts show the new versions, or "not run:
no pods") before the next starts, and between phases the run pauses for an operator: a form in
the Prefect UI (:class:`PhaseDecision`: approve or abort, with a note), unless
``approve="auto"``. The phase and the new root are recorded in Key Vault after every step
(:mod:`tasks.root_rotation`), so a re-run from any machine continues where a run stopped and
never makes a second new root. Abort returns to the old root while that is safe (before phase
3) and says so after. The mesh lock is held while a phase writes, not while the run waits.
Needs ``ISTIO_MULTIROOT_MESH`` and ``PROXY_CONFIG_XDS_AGENT`` (set by ``meshflow install``).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from flows.runs import FLOW_OPTIONS, arm_vault, claim_run, mesh_lock, raise_first, required_blocks
from meshflow.errors import InvalidError
from meshflow.manifests import ISTIO_NAMESPACE, ROOT_CERT_SECRET
from meshflow.rootrotation import PHASE_TITLES, RootRotationState, phase_trust
from meshflow.rotation import (
    CertificateRotation,
    EventSpec,
    MountCheck,
    RotationPolicy,
    mount_ids,
)
from meshflow.spec import ClusterSpec, MeshSpec
from tasks.aks import describe_aks_cluster
from tasks.appgateway import ensure_app_gateway
from tasks.events import emit
from tasks.istio import check_multiroot
from tasks.kube import restart_istiod_where_needed, wait_for_mounts
from tasks.pki import rotate_ingress_certificate, rotate_intermediate_ca
from tasks.preflight import check_blocks
from tasks.root_rotation import (
    begin_root_rotation,
    publish_root_trust,
    record_root_rotation,
    switch_back_to_old_root,
    switch_to_new_root,
)

__all__ = ["PhaseDecision", "RootRotationReport", "rotate_root"]

PAUSE_POLL_SECONDS = 2


class PhaseDecision(RunInput):
    """The operator's answer between two phases of a root rotation (a form in the Prefect UI)."""

    decision: Literal["approve", "abort"] = Field(
        default="approve",
        description="approve: start the next phase; abort: go back to the old root (only before "
        "phase 3).",
    )
    note: str = Field(default="", max_length=500, description="Why; kept in the history.")


class RootRotationReport(BaseModel):
    """Where the rotation ended: its state, and what each phase rotated (references only)."""

    model_config = ConfigDict(frozen=True)
    environment: str
    rotation_id: str
    status: str
    phase: int
    completed: int
    new_root_version: str
    history: tuple[str, ...]
    certificates: tuple[CertificateRotation, ...] = ()
    mounts: tuple[MountCheck, ...] = ()

    def markdown(self) -> str:
        """The artifact ``root-rotation-<env>``."""
        steps = "\n".join(f"1. {h}" for h in self.history)
        rows = "\n".join(
            f"| {c.cluster} | {c.object} | {c.action} | {c.old_version or ''} | "
            f"{c.new_version or ''} |"
            for c in self.certificates
        )
        table = (
            "\n| cluster | object | action | old version | new version |\n|---|---|---|---|---|\n"
            + rows + "\n" if rows else ""
        )  # fmt: skip
        return (
            f"# Root rotation {self.environment}: {self.status}\n\n"
            f"Rotation `{self.rotation_id}`, phase {self.phase} ({PHASE_TITLES[self.phase]}), "
            f"{self.completed} of 3 phases complete; new root key version "
            f"`{self.new_root_version}`.\n\n{steps}\n{table}"
        )


@flow(name="rotate-root", **FLOW_OPTIONS)
async def rotate_root(
    spec: MeshSpec, approve: Literal["ask", "auto"] = "ask", approval_timeout: int = 86400
) -> RootRotationReport:
    """Rotate the mesh root in three phases, pausing for approval between them (see above).

    Resumes a rotation in progress.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).
        approve: ``ask`` pauses for an approval in the UI between the phases; ``auto`` runs the
            three phases without pausing.
        approval_timeout: How long a pause waits for an approval, in seconds; the run then
            fails, and a re-run asks again.

    Raises:
        InvalidError: a cluster's istiod or proxies lack the multi-root settings (before any
            write), or an abort came after phase 3 started.
    """
    env = spec.environment
    await claim_run(env)
    async with mesh_lock(env):
        await check_blocks(required_blocks(spec), arm_vault(spec))
        problems = await asyncio.gather(
            *(check_multiroot(c, spec.istio_revision) for c in spec.clusters)
        )
        if found := [p for p in problems if p]:
            raise InvalidError("cannot rotate the root CA: " + "; ".join(found), system="Istio")
        state = await begin_root_rotation(spec.pki_store)
    rows: list[CertificateRotation] = []
    mounts: list[MountCheck] = []
    while state.status == "in progress":
        if not state.phase_done:
            async with mesh_lock(env):
                state, r, m = await _run_phase(spec, state)
            rows, mounts = rows + r, mounts + m
            _announce(env, state, f"meshflow.root-rotation.phase-{state.phase}-completed")
            continue
        answer = await _decide(state, approve, approval_timeout)
        if answer.decision == "abort":
            async with mesh_lock(env):
                state, r = await _abort(spec, state, answer.note)
            rows += r
            _announce(env, state, "meshflow.root-rotation.aborted")
            break
        note = f"phase {state.phase + 1} approved" + (f": {answer.note}" if answer.note else "")
        state = await record_root_rotation(spec.pki_store, state.advanced(note))
    report = RootRotationReport(
        environment=env, rotation_id=state.rotation_id, status=state.status, phase=state.phase,
        completed=state.completed, new_root_version=state.new_version, history=state.history,
        certificates=tuple(rows), mounts=tuple(mounts),
    )  # fmt: skip
    await acreate_markdown_artifact(report.markdown(), key=f"root-rotation-{env}")
    get_run_logger().info("root rotation %s: %s", report.rotation_id, report.status)
    return report


async def _decide(state: RootRotationState, approve: str, timeout: int) -> PhaseDecision:
    """The operator's decision on the next phase: a paused run's form, or auto-approval."""
    if approve == "auto":
        return PhaseDecision(decision="approve", note="auto")
    log = get_run_logger()
    log.info(
        "root rotation %s: phase %d is complete in every cluster (%s). Resume this run to "
        "start phase %d (%s), or abort%s.",
        state.rotation_id, state.phase, PHASE_TITLES[state.phase], state.phase + 1,
        PHASE_TITLES[state.phase + 1],
        " (this goes back to the old root)" if state.abortable else "",
    )  # fmt: skip
    return await apause_flow_run(
        wait_for_input=PhaseDecision, timeout=timeout, poll_interval=PAUSE_POLL_SECONDS,
        key=f"{state.rotation_id}-after-phase-{state.phase}",
    )  # fmt: skip


async def _run_phase(
    spec: MeshSpec, state: RootRotationState
) -> tuple[RootRotationState, list[CertificateRotation], list[MountCheck]]:
    """Do ``state.phase`` in every cluster (idempotent: a re-run redoes what is missing)."""
    pki, rows = spec.pki_store, []
    if state.phase == 2:
        await switch_to_new_root(pki, state)
        rows = await _reissue(spec)
    trust = await publish_root_trust(pki, state)
    await _trust_on_gateways(spec, phase_trust(state))
    expected = {f"secret/{ROOT_CERT_SECRET}": trust.version}
    mounts = await _mounts(spec, expected, rows)
    if state.phase == 2:
        await _restart_where_needed(spec, state, mounts)
    title = PHASE_TITLES[state.phase]
    done = await record_root_rotation(
        pki, state.with_completed(f"phase {state.phase} complete in every cluster: {title}")
    )
    return done, rows, mounts


async def _abort(
    spec: MeshSpec, state: RootRotationState, note: str
) -> tuple[RootRotationState, list[CertificateRotation]]:
    """Back to the old root: it signs again, the intermediates follow, then only it is trusted."""
    pki = spec.pki_store
    await switch_back_to_old_root(pki, state)
    rows = await _reissue(spec)  # intermediates the new root signed go back under the old one
    aborted = state.with_status("aborted", f"aborted in phase {state.phase}: {note or 'no note'}")
    aborted = await record_root_rotation(pki, aborted)
    await publish_root_trust(pki, aborted)
    await _trust_on_gateways(spec, phase_trust(aborted))
    return aborted, rows


async def _reissue(spec: MeshSpec) -> list[CertificateRotation]:
    """Every intermediate and the ingress leaf not signed by the mesh root, reissued under it."""
    policy = RotationPolicy(threshold_days=spec.pki.rotation_threshold_days)
    per_cluster = await asyncio.gather(
        *(rotate_intermediate_ca(spec.pki_store, c, policy) for c in spec.clusters)
    )
    leaf = await rotate_ingress_certificate(spec.pki_store, policy)
    return [*(row for rows in per_cluster for row in rows), leaf]


async def _trust_on_gateways(spec: MeshSpec, bundle: str) -> None:
    """Every ingress cluster's App Gateway trusts ``bundle`` (HTTPS ingress only)."""
    if not spec.ingress.https:
        return

    async def gateway(c: ClusterSpec) -> None:
        await ensure_app_gateway(c, await describe_aks_cluster(c), spec.key_vault_block, bundle)

    raise_first(
        await asyncio.gather(*(gateway(c) for c in spec.ingress_clusters), return_exceptions=True)
    )


async def _mounts(
    spec: MeshSpec, expected: dict[str, str], rows: list[CertificateRotation]
) -> list[MountCheck]:
    """Wait until istiod's mounts in every cluster show ``expected`` and its new intermediate."""

    def of(c: ClusterSpec) -> dict[str, str]:
        mine = [r for r in rows if r.cluster == c.name and r.new_version]
        return expected | mount_ids(mine)

    wait = spec.rotation.mount_wait_seconds
    return list(
        await asyncio.gather(
            *(wait_for_mounts(c, ISTIO_NAMESPACE, of(c), wait) for c in spec.clusters)
        )
    )


async def _restart_where_needed(
    spec: MeshSpec, state: RootRotationState, mounts: list[MountCheck]
) -> None:
    stale = {m.cluster for m in mounts if m.status == "stale"}
    await asyncio.gather(
        *(
            restart_istiod_where_needed(
                c,
                spec.istio_revision,
                state.old_pem,
                mounts_stale=c.name in stale,
                restart_on_timeout=spec.rotation.restart_istiod_on_timeout,
                run_id=str(flow_run.id or state.rotation_id),
            )
            for c in spec.clusters
        )
    )


def _announce(environment: str, state: RootRotationState, event: str) -> None:
    emit([
        EventSpec(
            event=event,
            resource={
                "prefect.resource.id": f"meshflow.mesh.{environment}",
                "prefect.resource.name": environment,
            },
            payload={"rotation": state.rotation_id, "phase": state.phase,
                     "new_root_version": state.new_version},
        )
    ])  # fmt: skip
