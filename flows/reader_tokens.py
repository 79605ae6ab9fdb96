"""Rotate the istio-reader tokens the remote secrets hold: the flow a schedule runs.

1. **Check the blocks**, before anything is written.
2. **Per source cluster, concurrently**: which reader token Secrets it has
   (``read-reader-tokens-of-<s>``), and from that the steps of its rotation
   (:func:`~meshflow.manifests.multicluster.reader_token_hops`). In each step, in this order:
   the new token Secret, filled by the token controller and accepted by the API server
   (``ensure-reader-token-<g>-of-<s>``); its token written into ``istio-remote-secret-<s>`` in
   every other cluster of the spec (``exchange-reader-token-<g>-from-<s>``); each of those
   checked with its own kubeconfig, as the install checks them (``check-remote-secrets-of-<s>``);
   and only when every check passed, the old token Secret deleted
   (``delete-reader-token-<g>-of-<s>``, which deletes nothing while a remote secret still holds
   its token). Two steps: from istioctl's name to an interim Secret and back to a new Secret
   of istioctl's name, so install and ``istioctl create-remote-secret`` keep finding the
   current token under the name they use, and a later install writes nothing.
3. **Report**: per source the old and new token Secrets (names and generations, never a
   token), the remote secrets updated, the checks and what was deleted; a Markdown artifact
   (``reader-tokens-<env>``); the run fails if any source did not finish.

Each run rotates once. A run that stopped (a check failed, a cluster was unreachable) keeps
every token a remote secret may hold; the next run finishes that rotation instead of starting
another (the interim Secret shows it), and never deletes a token a remote secret still holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel, ConfigDict

from flows.runs import FLOW_OPTIONS, mesh_run, required_blocks, settle
from meshflow.errors import MeshflowError
from meshflow.manifests.multicluster import (
    READER_INTERIM_TOKEN_SECRET,
    ReaderTokenSecret,
    TokenHop,
    reader_token_hops,
)
from meshflow.spec import ClusterSpec, MeshSpec
from tasks.kube import (
    Applied,
    RemoteAccess,
    check_remote_secrets,
    delete_reader_token,
    ensure_reader_token,
    exchange_reader_token,
    read_reader_tokens,
)
from tasks.preflight import check_blocks

__all__ = ["ReaderTokenReport", "SourceRotation", "rotate_reader_tokens"]

Status = Literal["rotated", "resumed", "stopped", "failed"]


class SourceRotation(BaseModel):
    """What one source cluster's rotation did: token Secrets by name and generation only.

    ``status``: ``rotated``; ``resumed`` (it finished a rotation an earlier run had begun);
    ``stopped`` (a check failed: the old token Secret is kept); ``failed`` (a step raised).
    """

    model_config = ConfigDict(frozen=True)
    source: str
    status: Status
    old_secret: ReaderTokenSecret | None = None
    new_secret: ReaderTokenSecret | None = None
    targets_updated: tuple[str, ...] = ()
    checks: tuple[RemoteAccess, ...] = ()
    deleted: tuple[ReaderTokenSecret, ...] = ()
    applied: tuple[Applied, ...] = ()
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the rotation of this source finished."""
        return self.status in ("rotated", "resumed")

    @property
    def writes(self) -> int:
        """Token Secrets created and deleted, remote secrets written."""
        return sum(a.written for a in self.applied)

    def row(self) -> str:
        """The source's line of the Markdown table."""
        readable = sum(c.read_ok for c in self.checks)
        cells = [
            self.source,
            self.status + (f": {self.detail}" if self.detail else ""),
            self.old_secret.describe() if self.old_secret else "-",
            self.new_secret.describe() if self.new_secret else "-",
            ", ".join(self.targets_updated) or "-",
            f"{readable}/{len(self.checks)} readable",
            ", ".join(d.describe() for d in self.deleted) or "-",
        ]
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


class ReaderTokenReport(BaseModel):
    """What a reader-token rotation did in every source cluster; never a token."""

    model_config = ConfigDict(frozen=True)
    environment: str
    sources: tuple[SourceRotation, ...]

    @property
    def ok(self) -> bool:
        """Whether every source's rotation finished."""
        return all(s.ok for s in self.sources)

    @property
    def writes(self) -> int:
        """Every write of the run (0 only for a mesh without clusters)."""
        return sum(s.writes for s in self.sources)

    @property
    def problems(self) -> list[str]:
        """One line per source that did not finish."""
        return [f"{s.source}: {s.status}: {s.detail}" for s in self.sources if not s.ok]

    def lines(self) -> list[str]:
        """The console summary: one line per source, then the writes."""
        out = [f"reader tokens of {self.environment}:"]
        for s in self.sources:
            if s.ok and s.new_secret:
                old = f"generation {s.old_secret.generation} -> " if s.old_secret else ""
                into = ", ".join(s.targets_updated) or "no cluster"
                out.append(f"  {s.source:<15} {s.status:<8} {old}generation "
                           f"{s.new_secret.generation}; remote secrets updated in {into}; "
                           f"{len(s.deleted)} old token Secrets deleted")  # fmt: skip
            else:
                out.append(f"  {s.source:<15} {s.status:<8} {s.detail}")
        out.append(f"  {self.writes} writes")
        return out

    def markdown(self) -> str:
        """The ``reader-tokens-<env>`` artifact."""
        head = [
            f"# Reader tokens of {self.environment}",
            "",
            "| source | outcome | old token Secret | new token Secret | remote secrets updated "
            "| checks | deleted |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        return "\n".join([*head, *(s.row() for s in self.sources), ""])


@flow(name="rotate-reader-tokens", **FLOW_OPTIONS)
async def rotate_reader_tokens(spec: MeshSpec) -> ReaderTokenReport:
    """Give each source's istio-reader a new token in every remote secret; delete the old one.

    Needs, on every cluster: create, get and delete on Secrets in ``istio-system`` (the token
    Secrets, the remote secrets), and what the install's step 09 check needs.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).

    Raises:
        MeshflowError: a source did not finish (one line each); its old token is kept.
    """
    async with mesh_run(spec.environment):
        await check_blocks(required_blocks(spec))
        lanes = await settle({s.name: _rotate(s, _others(spec, s)) for s in spec.clusters})
        report = ReaderTokenReport(
            environment=spec.environment,
            sources=tuple(_failed(n, o) if isinstance(o, BaseException) else o
                          for n, o in lanes.items()),
        )  # fmt: skip
        await _publish(report)
        if not report.ok:
            failed = next((o for o in lanes.values() if isinstance(o, BaseException)), None)
            raise MeshflowError(
                "\n".join([*report.problems,
                           "the old tokens are kept where a remote secret may still hold them; "
                           "fix the cause and run the rotation again"]),
                system="Kubernetes",
            ) from failed  # fmt: skip
        return report


def _others(spec: MeshSpec, source: ClusterSpec) -> tuple[ClusterSpec, ...]:
    return tuple(c for c in spec.clusters if c.name != source.name)


async def _rotate(source: ClusterSpec, targets: Sequence[ClusterSpec]) -> SourceRotation:
    """One source: each step's new token everywhere and checked before its old one goes."""
    present = await read_reader_tokens(source)
    hops = reader_token_hops(present)
    applied: list[Applied] = []
    checks: list[RemoteAccess] = []
    deleted: list[ReaderTokenSecret] = []
    for hop in hops:
        applied.append(await ensure_reader_token(source, hop.new))
        applied += await exchange_reader_token(source, targets, hop.new)
        checks = await check_remote_secrets(source, targets)
        if not all(c.read_ok for c in checks):
            return _outcome(source, hops, applied, checks, deleted, stopped_at=hop)
        if hop.old is not None:  # None: gone already
            gone = await delete_reader_token(source, targets, hop.old)
            applied.append(gone)
            if gone.written:
                deleted.append(hop.old)
    resumed = READER_INTERIM_TOKEN_SECRET in present
    return _outcome(source, hops, applied, checks, deleted, resumed=resumed)


def _outcome(
    source: ClusterSpec, hops: Sequence[TokenHop], applied: Sequence[Applied],
    checks: Sequence[RemoteAccess], deleted: Sequence[ReaderTokenSecret], *,
    resumed: bool = False, stopped_at: TokenHop | None = None,
) -> SourceRotation:  # fmt: skip
    old, new = (stopped_at.old, stopped_at.new) if stopped_at else (hops[0].old, hops[-1].new)
    status: Status = "stopped" if stopped_at else "resumed" if resumed else "rotated"
    detail = ""
    if stopped_at is not None:
        failing = "; ".join(_check_problem(c) for c in checks if not c.read_ok)
        detail = f"check failed ({failing}); " + (
            f"kept {old.describe()}" if old else "nothing deleted"
        )
    updated = sorted({a.cluster for a in applied if a.written and a.cluster != source.name})
    return SourceRotation(
        source=source.name, status=status, old_secret=old, new_secret=new,
        targets_updated=tuple(updated), checks=tuple(checks), deleted=tuple(deleted),
        applied=tuple(applied), detail=detail,
    )  # fmt: skip


def _check_problem(access: RemoteAccess) -> str:
    if not access.missing:
        return f"{access.target}: {access.detail}"
    shown = ", ".join(access.missing[:2])
    more = f" (+{len(access.missing) - 2} more)" if len(access.missing) > 2 else ""
    return f"{access.target}: the reader may not {shown}{more}"


def _failed(source: str, exc: BaseException) -> SourceRotation:
    # meshflow's errors carry no secret (the tasks' boundary); anything else is named by type.
    detail = str(exc) if isinstance(exc, MeshflowError) else type(exc).__name__
    return SourceRotation(source=source, status="failed", detail=detail)


async def _publish(report: ReaderTokenReport) -> None:
    await acreate_markdown_artifact(
        report.markdown(),
        key=f"reader-tokens-{report.environment}",
        description=f"Reader-token rotation of {report.environment}",
    )
    log = get_run_logger()
    for line in report.lines():
        log.info("%s", line)
