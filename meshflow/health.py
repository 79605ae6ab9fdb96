"""The mesh's health as the hourly ``verify-mesh`` run sees it. Pure: no SDK, no I/O.

A verify run (``flows/verify.py``) gives every check one :class:`HealthCheck` row (a cluster's
credentials, each remote secret, istiod's sync) and every certificate of the mesh PKI one
:class:`CertificateHealth` row (days left), and turns them into the run's artifact, its
console summary and, when anything failed, the run's failure message (:attr:`MeshHealth.problems`).

A status is one of: ``passed``; ``warning`` (worth a look, not a failure: a certificate within
the rotation threshold); ``not run`` (the check needs what is not there: pods on a cluster
without nodes, a cluster whose credentials check failed; never a pass); ``failed``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from meshflow.errors import MeshflowError

Status = Literal["passed", "warning", "not run", "failed"]

CREDENTIALS = "credentials"
ISTIOD_SYNC = "istiod sync"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class HealthCheck(_Frozen):
    """One check on one cluster, e.g. its credentials or one remote secret stored in it."""

    cluster: str
    check: str
    status: Status
    detail: str

    def line(self) -> str:
        """``<cluster>: <check>: <detail>``, as the run's failure message lists it."""
        return f"{self.cluster}: {self.check}: {self.detail}"


class CertificateHealth(_Frozen):
    """One certificate of the mesh PKI in Key Vault, and how long it has left."""

    object: str
    cluster: str
    """The cluster it belongs to, or ``mesh`` for the shared ones (root, ingress leaf)."""
    status: Status
    detail: str
    version: str | None = None
    not_after: dt.datetime | None = None
    days_left: int | None = None

    def line(self) -> str:
        """``<object> (<cluster>): <detail>``, as the run's failure message lists it."""
        return f"{self.object} ({self.cluster}): {self.detail}"


class MeshHealth(_Frozen):
    """What a verify run found: the flow's result and its artifact. Nothing was written."""

    environment: str
    threshold_days: int
    checked_at: dt.datetime
    checks: tuple[HealthCheck, ...]
    certificates: tuple[CertificateHealth, ...]

    @property
    def rows(self) -> tuple[HealthCheck | CertificateHealth, ...]:
        """Every row: the checks, then the certificates."""
        return (*self.checks, *self.certificates)

    @property
    def problems(self) -> list[str]:
        """One line per failed check or certificate: a non-empty list fails the run."""
        return [r.line() for r in self.rows if r.status == "failed"]

    @property
    def warnings(self) -> list[str]:
        """One line per row that is a warning or was not run."""
        return [f"{r.status}: {r.line()}" for r in self.rows if r.status in ("warning", "not run")]

    @property
    def ok(self) -> bool:
        """Nothing failed (a warning or a check not run is not a failure)."""
        return not self.problems

    def failure_message(self) -> str:
        """The run's failure message: a headline, then one line per problem (no secret)."""
        problems = self.problems
        head = (
            f"mesh {self.environment}: {len(problems)} health "
            f"{'problem' if len(problems) == 1 else 'problems'} (artifact "
            f"{artifact_key(self.environment)})"
        )
        return "\n".join([head, *problems])

    def markdown(self) -> str:
        """The artifact: the checks, then the certificates, as Markdown tables."""
        checks = "\n".join(
            f"| {c.cluster} | {c.check} | {_status_cell(c.status)} | {_cell(c.detail)} |"
            for c in self.checks
        )
        certs = "\n".join(
            f"| {c.object} | {c.cluster} | {_day(c.not_after)} | "
            f"{'' if c.days_left is None else c.days_left} | {_status_cell(c.status)} | "
            f"{_cell(c.detail)} |"
            for c in self.certificates
        )
        verdict = "healthy" if self.ok else f"**{len(self.problems)} problems** (the run failed)"
        return (
            f"# Mesh health: {self.environment}\n\n"
            f"Checked {self.checked_at.isoformat(timespec='seconds')}, read only: {verdict}; "
            f"{len(self.warnings)} warnings or checks not run. Certificates are flagged within "
            f"{self.threshold_days} days of expiry.\n\n"
            "| cluster | check | status | detail |\n|---|---|---|---|\n"
            f"{checks}\n\n"
            "| certificate | cluster | not after | days left | status | detail |\n"
            "|---|---|---|---|---|---|\n"
            f"{certs}\n"
        )

    def lines(self) -> list[str]:
        """The console summary: one line per row, then the counts."""
        out = [f"mesh health of {self.environment} (read only):"]
        for c in self.checks:
            out.append(f"  {c.cluster:<15} {c.check:<28} {c.status}: {c.detail}")
        for r in self.certificates:
            left = "" if r.days_left is None else f"{r.days_left} days left"
            out.append(f"  {r.cluster:<15} {r.object:<28} {r.status}: {left or r.detail}")
        out.append(f"  {len(self.problems)} problems; {len(self.warnings)} warnings or not run")
        return out


class MeshUnhealthyError(MeshflowError):
    """A verify run found problems: its message is :meth:`MeshHealth.failure_message`."""


def reason_of(exc: BaseException) -> str:
    """What a row says about a step that raised ``exc``: one line, no secret.

    meshflow's errors carry no secret (the tasks' boundaries make sure); anything else is
    named by its type only.
    """
    text = str(exc) if isinstance(exc, MeshflowError) else type(exc).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def artifact_key(environment: str) -> str:
    """The key of a verify run's artifact: ``mesh-health-<environment>``."""
    return f"mesh-health-{environment}"


# -- The decisions: one function per kind of row -----------------------------------------------


def failed(cluster: str, check: str, reason: str) -> HealthCheck:
    """A check that could not be made because its step raised ``reason``."""
    return HealthCheck(cluster=cluster, check=check, status="failed", detail=reason)


def credentials_check(cluster: str, *, server: str, auth: str, namespaces: int) -> HealthCheck:
    """A cluster whose credentials came through the AKS API and whose API server answered."""
    return HealthCheck(
        cluster=cluster, check=CREDENTIALS, status="passed",
        detail=f"{server} ({auth}): {namespaces} namespaces listed",
    )  # fmt: skip


def remote_secret_check(
    *, source: str, target: str, present: bool, reachable: bool, read_ok: bool,
    missing: Sequence[str] = (), detail: str = "",
) -> HealthCheck:  # fmt: skip
    """``source``'s remote secret in ``target``: present, its token accepted, reader rights."""
    check = remote_secret_name_of(source)
    if not present:
        why = (
            f"missing (istiod in {target} cannot see {source}): run `meshflow install` to "
            "exchange it again"
        )
    elif not reachable:
        why = (
            f"its kubeconfig does not reach {source} ({detail}); a deleted or rotated token? run "
            "`meshflow rotate-reader-tokens` or `meshflow install`"
        )
    elif not read_ok:
        why = f"{source}'s reader lacks {', '.join(missing)}: run `meshflow install`"
    else:
        return HealthCheck(
            cluster=target, check=check, status="passed",
            detail=f"readable; its token works against {source}: {detail}",
        )  # fmt: skip
    return HealthCheck(cluster=target, check=check, status="failed", detail=why)


def remote_secret_name_of(source: str) -> str:
    """The check's name for ``source``'s remote secret in another cluster."""
    return f"remote secret of {source}"


def blocked(cluster: str, check: str, *, by: str) -> HealthCheck:
    """A check not run on ``cluster`` because the credentials check of ``by`` failed.

    Not a failure of its own: that credentials check is the run's problem.
    """
    return HealthCheck(
        cluster=cluster, check=check, status="not run",
        detail=f"the credentials check of {by} failed",
    )  # fmt: skip


def istiod_check(cluster: str, *, status: str, detail: str, nodes: int) -> HealthCheck:
    """Istiod's view of its peers (step 09), given the cluster's node count.

    With no nodes no pod can run: "not run", never a pass. With nodes, an istiod that is not
    running is a failure, not a check skipped.
    """
    if status == "passed":
        return HealthCheck(cluster=cluster, check=ISTIOD_SYNC, status="passed", detail=detail)
    if status == "failed":
        return HealthCheck(cluster=cluster, check=ISTIOD_SYNC, status="failed", detail=detail)
    if nodes == 0:
        return HealthCheck(
            cluster=cluster, check=ISTIOD_SYNC, status="not run",
            detail="no nodes: no istiod can run on this cluster (sync not checked)",
        )  # fmt: skip
    return HealthCheck(
        cluster=cluster, check=ISTIOD_SYNC, status="failed",
        detail=f"{detail}, though the cluster has {nodes} nodes: check istiod's Deployment",
    )  # fmt: skip


def certificate_health(
    obj: str, cluster: str, *, not_after: dt.datetime | None, now: dt.datetime,
    threshold_days: int, version: str | None = None, signed_by_root: bool = True,
    root: bool = False,
) -> CertificateHealth:  # fmt: skip
    """A certificate's row: failed when missing or expired, a warning within the threshold.

    Days left are whole days, as the rotation table counts them. "Within the threshold" is
    :func:`meshflow.pki.rotation_due`'s test (``threshold_days`` or less left): the next
    ``rotate-certificates`` run reissues it. One not signed by the current root is a warning:
    a root rotation between its phases, or ``rotate-certificates`` reissues it. The ``root``
    is renewed by ``rotate-root`` only.
    """
    renew = (
        "rotate it with `meshflow rotate-root`"
        if root
        else "the next rotate-certificates run reissues it"
    )
    if not_after is None:
        return CertificateHealth(
            object=obj, cluster=cluster, status="failed",
            detail="no root CA in Key Vault: for a new mesh run `meshflow install`; else recover "
            "the deleted root (the install refuses to make a second one)"
            if root
            else "missing in Key Vault: run `meshflow install` to issue it",
        )  # fmt: skip
    left = not_after - now
    days = left.days
    until = _day(not_after)
    status: Status
    if left <= dt.timedelta(0):
        fix = "`meshflow rotate-root`" if root else "`meshflow rotate --force`"
        status, detail = "failed", f"expired on {until}: run {fix} now"
    elif left <= dt.timedelta(days=threshold_days):
        status = "warning"
        detail = (
            f"expires on {until}, within the rotation threshold ({threshold_days} days): {renew}"
        )
    elif not signed_by_root:
        status = "warning"
        detail = (
            "not signed by the current root (a root rotation in progress? else the next "
            "rotate-certificates run reissues it)"
        )
    else:
        status, detail = "passed", f"expires on {until}"
    return CertificateHealth(
        object=obj, cluster=cluster, status=status, detail=detail, version=version,
        not_after=not_after, days_left=days,
    )  # fmt: skip


def _day(when: dt.datetime | None) -> str:
    return when.date().isoformat() if when else ""


def _status_cell(status: Status) -> str:
    return f"**{status}**" if status == "failed" else status


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
