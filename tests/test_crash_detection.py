"""Crash detection for deployment runs: a run a worker took, then abandoned before it started.

A worker takes a run by moving it to ``Pending`` and ``Submitting``, then starts its process;
a worker stopped in between leaves the run there, with no heartbeat to miss (found in the
fan-out's worker-stop test under the whole suite's load: a second child stuck ``Submitting``
kept the parent waiting). Here a run of a registered deployment is moved as a worker moves it,
on a real Prefect server whose triggers service judges it; no worker runs on the pool.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled, Pending, Running, Submitting

from deployments.automations import (
    START_WITHIN,
    ensure_crash_detection,
    start_detection,
    unstarted_runs_name,
)
from deployments.deploy import deploy_environment
from meshflow.spec import MeshSpec
from sandbox.prefect_server import PrefectServer

ENV = "stuck"
CLUSTER = "dev-westeurope-aks-1"
"""The one cluster of the mesh (dev's, in environment ``stuck``)."""
WINDOW = dt.timedelta(seconds=15)
"""The test's start window (Prefect's proactive triggers take 10 s and more)."""
JUDGED_WITHIN = 75.0
"""The window, plus the triggers service's evaluation period and a loaded machine's delay."""


def test_a_run_left_pending_is_judged_after_its_pool_types_window() -> None:
    automation = start_detection("prod", start_within=START_WITHIN["process"])
    trigger = automation.trigger
    assert trigger.after == {"prefect.flow-run.Pending"}
    assert "prefect.flow-run.Running" in trigger.expect
    assert "prefect.flow-run.Submitting" not in trigger.expect  # the worker's own next step
    assert trigger.within == dt.timedelta(minutes=2)
    assert trigger.for_each == {"prefect.resource.id"}
    assert [r["prefect.resource.id"] for r in trigger.match_related] == [  # type: ignore[union-attr]
        ["prefect.tag.meshflow"], ["prefect.tag.prod"]]  # fmt: skip
    assert START_WITHIN["kubernetes"] > START_WITHIN["process"]  # a pod may pull its image
    (action,) = automation.actions
    assert action.state == StateType.CRASHED  # type: ignore[union-attr]
    assert unstarted_runs_name("prod") in (action.message or "")  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def stuck_deployment(prefect_server: PrefectServer) -> Iterator[UUID]:
    dev = MeshSpec.from_yaml(Path("deployments/environments/dev.yaml"))
    spec = dev.model_copy(update={"environment": ENV})
    result = asyncio.run(deploy_environment(ENV, spec, only=["install-cluster"]))
    names = {a.name for a in result.crash_detection}
    assert unstarted_runs_name(ENV) in names
    asyncio.run(ensure_crash_detection(ENV, start_within=WINDOW))  # the short window here
    (deployment,) = result.deployments
    yield deployment.id
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        ):
            if run.state and not run.state.is_final():
                client.set_flow_run_state(run.id, Cancelled(), force=True)


def _taken_by_a_worker(deployment: UUID) -> UUID:
    """A new run of ``deployment``, moved as a worker moves a run it takes."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(deployment, parameters={"cluster": CLUSTER})
        client.set_flow_run_state(run.id, Pending())
        client.set_flow_run_state(run.id, Submitting())
        return run.id


def _state(run: UUID) -> tuple[StateType | None, str]:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run).state
    return (state.type, state.message or "") if state else (None, "")


def test_a_run_whose_worker_stopped_before_starting_it_is_marked_crashed(
    stuck_deployment: UUID,
) -> None:
    abandoned = _taken_by_a_worker(stuck_deployment)
    started = _taken_by_a_worker(stuck_deployment)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(started, Running())  # its process started
    deadline = time.monotonic() + JUDGED_WITHIN
    while time.monotonic() < deadline and _state(abandoned)[0] != StateType.CRASHED:
        time.sleep(1)
    kind, message = _state(abandoned)
    assert kind == StateType.CRASHED, f"still {kind} after {JUDGED_WITHIN:.0f}s"
    assert message == (
        "Pending for 15 seconds without starting: the worker that took it stopped before its "
        f"process ran. Marked Crashed by the automation {unstarted_runs_name(ENV)}."
    )
    assert _state(started)[0] == StateType.RUNNING  # judged by its heartbeats instead
