"""Certificate rotation: what a rotation run decides, reports and announces. Pure: no SDK, no I/O.

A rotation run (``flows/rotate.py``) gives every certificate of the mesh one
:class:`CertificateRotation` row, every mount one :class:`MountCheck`, and turns them into the
table artifact, the console summary and the Prefect events users build automations on
(:func:`rotation_events`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from meshflow.rootrotation import pem_blocks

Action = Literal["kept", "reissued", "rolled", "would reissue", "would roll", "due", "failed"]
"""What a rotation run did with a certificate (``would ...``: a dry run's plan)."""
MountStatus = Literal["current", "stale", "not run: no pods"]
RestartAction = Literal["restarted", "would restart", "not needed", "not run: no pods"]

EVENT_PREFIX = "meshflow.certificate"
EVENT_ROTATION_COMPLETED = "meshflow.rotation.completed"
EVENT_ROTATION_FAILED = "meshflow.rotation.failed"
FORCED_TAG = "rotation-run"
"""Key Vault tag on versions a forced rotation issued: the run id, so its retries keep them."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class RotationPolicy(_Frozen):
    """When a certificate is reissued: within ``threshold_days`` of expiry, or forced.

    ``forced_by`` is the rotation run's id: a forced run reissues every version that does not
    carry it in :data:`FORCED_TAG`, so its retries and re-tries of one step do not reissue twice.
    """

    threshold_days: int = Field(ge=1)
    forced_by: str | None = None
    dry_run: bool = False


class CertificateRotation(_Frozen):
    """One Key Vault object's row in the rotation table."""

    object: str
    cluster: str
    """The cluster it belongs to, or ``mesh`` for the shared ones."""
    action: Action
    reason: str
    old_version: str | None = None
    new_version: str | None = None
    old_not_after: dt.datetime | None = None
    new_not_after: dt.datetime | None = None

    @property
    def written(self) -> bool:
        """Whether this run stored a new version."""
        return self.action in ("reissued", "rolled")


class MountCheck(_Frozen):
    """Whether the pods mounting a SecretProviderClass hold the current Key Vault versions."""

    cluster: str
    namespace: str
    status: MountStatus
    detail: str
    pods: int = 0


class IstiodRestart(_Frozen):
    """Whether a cluster's istiod was restarted to load its new CA, and why."""

    cluster: str
    deployment: str
    action: RestartAction
    reason: str


class FrontendCheck(_Frozen):
    """The App Gateway listener's certificate: renewed by Key Vault, referenced unversioned."""

    certificate: str
    not_after: dt.datetime | None
    auto_renew: bool
    detail: str
    unversioned: tuple[str, ...] = ()
    """The ingress clusters whose App Gateway references it without a version."""
    pinned: tuple[str, ...] = ()
    """The ingress clusters whose App Gateway pins one version (it will not follow renewals)."""

    @property
    def ok(self) -> bool:
        """Key Vault renews it and no gateway pins a version."""
        return self.auto_renew and not self.pinned


class RotationReport(_Frozen):
    """What a rotation run found and did: the flow's result and its artifact."""

    environment: str
    dry_run: bool
    threshold_days: int
    forced: bool
    certificates: tuple[CertificateRotation, ...]
    frontend: FrontendCheck | None = None
    mounts: tuple[MountCheck, ...] = ()
    restarts: tuple[IstiodRestart, ...] = ()

    @property
    def written(self) -> list[CertificateRotation]:
        """The rows for which this run stored a new version."""
        return [c for c in self.certificates if c.written]

    @property
    def problems(self) -> list[str]:
        """What needs an operator: failed rows, stale mounts, a frontend Key Vault won't renew."""
        found = [
            f"{c.object} ({c.cluster}): {c.reason}"
            for c in self.certificates
            if c.action in ("failed", "due")
        ]
        found += [
            f"{m.namespace} on {m.cluster}: {m.detail}" for m in self.mounts if m.status == "stale"
        ]
        if self.frontend is not None and not self.frontend.ok:
            found.append(f"{self.frontend.certificate}: {self.frontend.detail}")
        return found

    def table(self) -> list[dict[str, str]]:
        """Rows of the table artifact: object, cluster, not-after and version before and after."""
        return [
            {
                "object": c.object,
                "cluster": c.cluster,
                "old_not_after": _day(c.old_not_after),
                "new_not_after": _day(c.new_not_after),
                "old_version": c.old_version or "",
                "new_version": c.new_version or "",
                "action": c.action,
                "reason": c.reason,
            }
            for c in self.certificates
        ] + [
            {
                "object": r.deployment,
                "cluster": r.cluster,
                "old_not_after": "",
                "new_not_after": "",
                "old_version": "",
                "new_version": "",
                "action": r.action,
                "reason": r.reason,
            }
            for r in self.restarts
        ]

    def lines(self) -> list[str]:
        """The console summary: one line per cluster and shared object, then the checks."""
        mode = "plan (dry run, nothing written)" if self.dry_run else "rotation"
        why = "forced" if self.forced else f"threshold {self.threshold_days} days"
        out = [f"certificate {mode} for {self.environment} ({why}):"]
        for c in self.certificates:
            until = f"until {_day(c.new_not_after or c.old_not_after) or '-'}"
            out.append(f"  {c.cluster:<15} {c.object:<24} {c.action:<13} {until}  {c.reason}")
        if self.frontend is not None:
            out.append(f"  {'frontend':<15} {self.frontend.certificate:<24} {self.frontend.detail}")
        for m in self.mounts:
            out.append(f"  {m.cluster:<15} mounts in {m.namespace:<14} {m.status}: {m.detail}")
        for r in self.restarts:
            out.append(f"  {r.cluster:<15} {r.deployment:<24} {r.action}: {r.reason}")
        out.append(f"  {len(self.written)} new versions; {len(self.problems)} problems")
        return out


def stale_mounts(statuses: Iterable[Mapping[str, Any]], expected: Mapping[str, str]) -> list[str]:
    """``<pod>: <id> at <version>`` for each mounted object of ``expected`` not at its version.

    ``statuses`` are ``SecretProviderClassPodStatus`` objects; ``expected`` maps the provider's
    object ids (``<type>/<name>``, e.g. ``cert/alpha-ca-cert``) to the Key Vault version the
    pods should hold. An object a pod does not list counts as stale.
    """
    stale = []
    for status in statuses:
        body = status.get("status") or {}
        pod = str(body.get("podName") or (status.get("metadata") or {}).get("name") or "?")
        held = {str(o.get("id")): str(o.get("version")) for o in body.get("objects") or []}
        for object_id, version in sorted(expected.items()):
            if held.get(object_id) != version:
                stale.append(f"{pod}: {object_id} at {held.get(object_id, 'absent')}")
    return stale


def mount_ids(rows: Iterable[CertificateRotation]) -> dict[str, str]:
    """The CSI provider's object ids (``<type>/<name>``) of ``rows`` and the versions to hold.

    A chain is mounted as a secret; a certificate as its key (``secret``) and as its
    certificate (``cert``). A row's version is its new one, else the one it kept.
    """
    ids: dict[str, str] = {}
    for row in rows:
        version = row.new_version or row.old_version
        if version is None:
            continue
        kinds = ("secret",) if row.object.endswith("-cert-chain") else ("secret", "cert")
        ids |= {f"{kind}/{row.object}": version for kind in kinds}
    return ids


def restart_reason(
    *, served_root: str, root_pem: str, mounts_stale: bool, restart_on_timeout: bool
) -> str | None:
    """Why a running istiod must be restarted to load its new CA; None when it reloads by itself.

    istiod hot-reloads ``/etc/cacerts`` only if it started with the plug-in CA; it then writes
    that root into ``istio-ca-root-cert`` (``served_root``). One that serves another root
    started without it. A stale mount is a reason only when the spec says so.
    """
    if not any(
        root.strip() in served_root for root in pem_blocks(root_pem)
    ):  # a bundle while a root rotates
        return "istiod did not start with the plug-in CA (it serves another root)"
    if mounts_stale and restart_on_timeout:
        return "its mounts did not show the new versions in time"
    return None


def _day(when: dt.datetime | None) -> str:
    return when.date().isoformat() if when else ""


class EventSpec(_Frozen):
    """One Prefect event, as ``prefect.events.emit_event`` takes it."""

    event: str
    resource: dict[str, str]
    related: tuple[dict[str, str], ...] = ()
    payload: dict[str, Any] = Field(default_factory=dict)


def certificate_resource(environment: str, name: str) -> dict[str, str]:
    """The event resource of a Key Vault object of a mesh."""
    return {
        "prefect.resource.id": f"meshflow.certificate.{environment}.{name}",
        "prefect.resource.name": name,
        "meshflow.environment": environment,
    }


def _related(environment: str, cluster: str) -> tuple[dict[str, str], ...]:
    mesh = {
        "prefect.resource.id": f"meshflow.mesh.{environment}",
        "prefect.resource.role": "mesh",
        "prefect.resource.name": environment,
    }
    if cluster == "mesh":
        return (mesh,)
    return (
        mesh,
        {
            "prefect.resource.id": f"meshflow.cluster.{environment}.{cluster}",
            "prefect.resource.role": "cluster",
            "prefect.resource.name": cluster,
        },
    )


_EVENT_OF: dict[Action, str] = {
    "reissued": "reissued",
    "rolled": "rolled",
    "failed": "failed",
    "kept": "within-threshold",
    "would reissue": "due",
    "would roll": "due",
    "due": "due",
}


def rotation_events(report: RotationReport) -> list[EventSpec]:
    """The events of a rotation run: one per certificate, and the run's outcome.

    ``meshflow.certificate.reissued`` / ``.rolled`` (a new version), ``.failed``,
    ``.within-threshold`` (kept: more than the threshold left) and ``.due`` (a dry run, or an
    object meshflow does not renew itself); then ``meshflow.rotation.completed`` or
    ``meshflow.rotation.failed`` with the mesh as resource.
    """
    env = report.environment
    events = [
        EventSpec(
            event=f"{EVENT_PREFIX}.{_EVENT_OF[c.action]}",
            resource=certificate_resource(env, c.object),
            related=_related(env, c.cluster),
            payload={
                "cluster": c.cluster,
                "action": c.action,
                "reason": c.reason,
                "old_version": c.old_version,
                "new_version": c.new_version,
                "new_not_after": _day(c.new_not_after or c.old_not_after),
            },
        )
        for c in report.certificates
    ]
    events.append(outcome_event(env, report.problems, dry_run=report.dry_run))
    return events


def outcome_event(environment: str, problems: Iterable[str], *, dry_run: bool) -> EventSpec:
    """``meshflow.rotation.completed`` (no problem) or ``meshflow.rotation.failed``."""
    listed = list(problems)
    return EventSpec(
        event=EVENT_ROTATION_FAILED if listed else EVENT_ROTATION_COMPLETED,
        resource={
            "prefect.resource.id": f"meshflow.mesh.{environment}",
            "prefect.resource.name": environment,
            "meshflow.dry-run": "true" if dry_run else "false",
        },
        payload={"problems": listed[:20], "dry_run": dry_run},
    )
