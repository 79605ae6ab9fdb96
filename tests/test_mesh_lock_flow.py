"""An install started while a rotation of the same mesh runs waits for it: never beside it.

The collision policy (flows/runs.py, docs/deployments.md): every run that changes a mesh takes
the Prefect global concurrency limit ``meshflow-mesh-<env>``; a second run logs whom it waits
for and waits (up to 30 min, then fails saying so). Here the rotation is slowed by Key Vault
latency so that the install surely starts while it holds the lock.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
)

from flows.install import install_mesh
from flows.rotate import rotate_certificates
from flows.runs import lock_name
from meshflow.spec import MeshSpec
from sandbox.azure import AzureEmulator

pytestmark = pytest.mark.e2e


async def _slots(name: str) -> int:
    async with get_client() as client:
        try:
            return (await client.read_global_concurrency_limit_by_name(name)).active_slots
        except Exception:  # not created yet
            return 0


async def _run_times(flow_run_id: Any) -> tuple[Any, Any]:
    async with get_client() as client:
        (run,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        return run.start_time, run.end_time


async def _first_task_start(flow_run_id: Any) -> Any:
    async with get_client() as client:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(),
        )
        return min(t.start_time for t in tasks if t.start_time is not None)


async def _logs(flow_run_id: Any) -> list[str]:
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        return [log.message for log in logs]


def test_an_install_started_during_a_rotation_waits_for_it(
    installed_mesh: Any, mesh_env: MeshSpec, azure_emulator: AzureEmulator
) -> None:
    # Each certificate read of the rotation takes 1.5 s more, for the first 6 of them.
    azure_emulator.add_fault(r"^/certificates/", method="GET", status=None, delay_ms=1500, times=6)
    rotation: dict[str, Any] = {}

    def rotate() -> None:
        rotation["state"] = asyncio.run(
            rotate_certificates(mesh_env, force=True, return_state=True)
        )

    # The thread runs in this context: the session's Prefect settings are context variables.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(rotate,))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while asyncio.run(_slots(lock_name(mesh_env.environment))) == 0:
            assert time.monotonic() < deadline, "the rotation never took the mesh lock"
            time.sleep(0.1)
        install = asyncio.run(install_mesh(mesh_env, return_state=True))
    finally:
        thread.join(timeout=300)
        azure_emulator.clear_faults()
    assert rotation["state"].is_completed(), rotation["state"].message
    assert install.is_completed(), install.message
    _, rotation_end = asyncio.run(_run_times(rotation["state"].state_details.flow_run_id))
    install_id = install.state_details.flow_run_id
    # The install's first step (its block check) started only after the rotation had ended.
    assert asyncio.run(_first_task_start(install_id)) >= rotation_end
    waited = [m for m in asyncio.run(_logs(install_id)) if "another run holds the lock" in m]
    assert len(waited) == 1
    assert f"meshflow-mesh-{mesh_env.environment}" in waited[0]
