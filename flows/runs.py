"""What every meshflow flow run does around its steps: results, the mesh lock, runs that died.

- **Results.** Flows return references (names, versions, expiry), never secrets, and do not
  persist them (:data:`FLOW_OPTIONS`). Prefect still writes a *failed* flow run's exception to
  its result storage; with the JSON serializer that is the exception's type and message only,
  in files readable by the owner alone (a process that loads meshflow's flows creates files
  with umask 077). The storage folder is
  Prefect's ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``; the ``meshflow`` command points it into the
  environment's own state folder (the sandbox's is removed by ``sandbox down``).
- **One run per mesh at a time.** Install, PKI and rotation runs of one mesh take the Prefect
  global concurrency limit ``meshflow-mesh-<environment>`` (limit 1). Collision policy: a run
  that finds it taken logs who to wait for and waits, up to :data:`MESH_LOCK_TIMEOUT`, then
  fails with a message; it never runs beside the other. A holder that died releases it when
  its lease lapses (within :data:`LEASE_SECONDS`). Key Vault settles concurrent roots by itself
  too (:mod:`tasks.pki`): this lock is the first line, not the only one.
- **Runs that died.** Each mesh run tags itself with the mesh, host and process id. At start, a
  run marks ``Crashed`` every other run of its mesh still shown as running whose process on
  this host is gone (killed, say), and their sub-flows. A run that died on another host is
  not judged from here: Prefect's heartbeat-based zombie detection (an automation on the
  flow-run heartbeat events) is the way for runs on workers, set up with the deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.concurrency.asyncio import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from blocks import AksCluster, AzureCredentials, KeyVault
from meshflow.errors import MeshflowError
from meshflow.spec import MeshSpec

MESH_LOCK_TIMEOUT = 30 * 60.0
"""Seconds a run waits for another run of its mesh to finish before it gives up."""
LEASE_SECONDS = 60.0
"""How long the lock outlives a holder that stopped renewing it (Prefect's minimum lease)."""
_FIRST_TRY_SECONDS = 1.0


# Whatever a process running meshflow's flows writes (Prefect's result files above all) is
# readable by its owner alone: a flow process, or a worker's, is meshflow's to configure.
os.umask(0o077)

FLOW_OPTIONS: dict[str, Any] = {"persist_result": False, "result_serializer": "json"}
"""Keyword arguments every meshflow ``@flow`` takes (see the module docstring)."""


def lock_name(environment: str) -> str:
    """The Prefect global concurrency limit that one mesh's runs take."""
    return f"meshflow-mesh-{environment}"


def _tags(environment: str) -> list[str]:
    return [f"mesh:{environment}", f"host:{socket.gethostname()}", f"pid:{os.getpid()}"]


async def _ensure_limit(name: str) -> None:
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

        try:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=1)
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 409:  # created by a run that started with us
                raise


@contextlib.asynccontextmanager
async def mesh_lock(environment: str) -> AsyncIterator[None]:
    """Hold the mesh's lock for the body (see the module docstring for the policy).

    Raises:
        MeshflowError: another run held it for :data:`MESH_LOCK_TIMEOUT`.
    """
    name = lock_name(environment)
    await _ensure_limit(name)
    options: dict[str, Any] = {"occupy": 1, "strict": True, "lease_duration": LEASE_SECONDS}
    held = False
    try:
        async with concurrency(name, timeout_seconds=_FIRST_TRY_SECONDS, **options):
            held = True
            yield
            return
    except TimeoutError:
        if held:
            raise
    get_run_logger().warning(
        "mesh %s: another run holds the lock %r (see the flow runs tagged mesh:%s); waiting up "
        "to %.0f min. A run that died releases it within %.0f s.",
        environment, name, environment, MESH_LOCK_TIMEOUT / 60, LEASE_SECONDS,
    )  # fmt: skip
    try:
        async with concurrency(name, timeout_seconds=MESH_LOCK_TIMEOUT, **options):
            held = True
            yield
    except TimeoutError as exc:
        if held:
            raise
        raise MeshflowError(
            f"mesh {environment}: another run held the lock {name!r} for "
            f"{MESH_LOCK_TIMEOUT / 60:.0f} min; find it in the Prefect UI (tag mesh:{environment})"
            " and wait for it or cancel it, then run again",
            system="Prefect", object=name,
        ) from exc  # fmt: skip


def _process_gone(tags: list[str]) -> int | None:
    """The pid in ``tags`` if it ran on this host and no longer exists, else None."""
    found = dict(t.split(":", 1) for t in tags if ":" in t)
    if found.get("host") != socket.gethostname() or not found.get("pid", "").isdigit():
        return None
    pid = int(found["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        return None  # alive, someone else's
    return None


async def claim_run(environment: str) -> list[UUID]:
    """Tag this run as one of ``environment``'s; mark its dead predecessors Crashed.

    Returns the ids of the runs marked Crashed (sub-flows included).
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return []
    me = context.flow_run
    crashed: list[UUID] = []
    async with get_client() as client:
        await client.update_flow_run(me.id, tags=sorted({*me.tags, *_tags(environment)}))
        running = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(not_any_=[me.id]),
                tags=FlowRunFilterTags(all_=[f"mesh:{environment}"]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
            )
        )
        dead = {run.id: pid for run in running if (pid := _process_gone(run.tags)) is not None}
        if not dead:
            return []
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=list(dead)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
            )
        )
        for run_id, reason in [
            *((rid, f"its process {pid} on {socket.gethostname()} is gone") for rid, pid in
              dead.items()),
            *((c.id, "its parent run's process is gone") for c in children),
        ]:  # fmt: skip
            await client.set_flow_run_state(
                run_id, Crashed(message=f"Marked crashed by run {me.name}: {reason}"), force=True
            )
            crashed.append(run_id)
    get_run_logger().warning(
        "mesh %s: marked %d runs Crashed whose process had died", environment, len(crashed)
    )
    return crashed


@contextlib.asynccontextmanager
async def mesh_run(environment: str) -> AsyncIterator[None]:
    """The start of every run that changes a mesh: claim the run, then hold the mesh lock."""
    await claim_run(environment)
    async with mesh_lock(environment):
        yield


def arm_vault(spec: MeshSpec) -> str | None:
    """The Key Vault block that must name its ARM resource: the mesh vault, when HTTPS ingress."""
    return spec.key_vault_block if spec.ingress.https and spec.ingress_clusters else None


def required_blocks(spec: MeshSpec) -> list[tuple[type[Block], str]]:
    """Every Prefect block ``spec`` names, with the type it must have."""
    needed: list[tuple[type[Block], str]] = [
        (AzureCredentials, spec.credentials_block),
        (KeyVault, spec.key_vault_block),
    ]
    if spec.root_key_vault_block:
        needed.append((KeyVault, spec.root_key_vault_block))
    if spec.frontend_pfx_block:
        needed.append((Secret, spec.frontend_pfx_block))
    return needed + [(AksCluster, c.aks_block) for c in spec.clusters]


T = TypeVar("T")


# -- running stages side by side --------------------------------------------------------------


async def settle(steps: Mapping[str, Awaitable[T]]) -> dict[str, T | BaseException]:
    """Every step run to its end; each one's result or the error it raised.

    ``asyncio.gather`` would stop waiting at the first failure and leave the other steps
    unattended; a cancelled run cancels what it started.
    """
    futures = {name: asyncio.ensure_future(step) for name, step in steps.items()}
    if not futures:
        return {}
    try:
        await asyncio.wait(futures.values())
    except asyncio.CancelledError:
        for f in futures.values():
            f.cancel()
        raise
    return {name: f.exception() or f.result() for name, f in futures.items()}


def raise_first(outcomes: Iterable[Any]) -> None:
    """Raise the first of ``outcomes`` that is an exception (the run's failure)."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
