"""The sandbox's Prefect worker and deployments: the sandbox as a working Prefect installation.

``meshflow sandbox up`` registers the sandbox's deployments (``install-mesh-sandbox`` and the
others, see :mod:`deployments.render`) on its ``meshflow-sandbox`` process pool and starts one
worker on it, so a run started from the UI (or through the API) runs on the sandbox. The worker
and the flow runs it starts carry the sandbox's marker, so ``sandbox down`` stops them too.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from sandbox import ISTIOCTL_STANDIN, processes
from sandbox.kube import SandboxError
from sandbox.prefect_server import QUIET_ENV

POOL = "meshflow-sandbox"
POLL_SECONDS = 2
"""How often the worker asks for runs (Prefect's default 10 s makes the UI's Run button slow)."""
READY_TIMEOUT = 60.0


def job_env(root: Path) -> dict[str, str]:
    """What every sandbox deployment run gets in its environment on the worker (no secret).

    Heartbeats are set for every deployment by :func:`deployments.render.deployments_for`.
    """
    return {
        **QUIET_ENV,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(root / "results"),
        "MESHFLOW_ISTIOCTL": str(ISTIOCTL_STANDIN),
    }


def command_line(name: str, pool: str = POOL) -> list[str]:
    """The worker's argv."""
    return [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
            "--type", "process", "--name", name]  # fmt: skip


def start_worker(
    root: Path, api_url: str, *, marker: str, name: str = "sandbox-worker-1", pool: str = POOL
) -> int:
    """Start a process worker on ``pool``; return its pid once the server has seen it poll.

    Raises:
        SandboxError: it did not show up within :data:`READY_TIMEOUT` (its log's tail said).
    """
    log = root / "worker" / f"{name}.log"
    started = processes.spawn(
        name, command_line(name, pool), log=log, marker=marker, cwd=root,
        env={**QUIET_ENV, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(root / "worker"),
             "PREFECT_WORKER_QUERY_SECONDS": str(POLL_SECONDS)},
    )  # fmt: skip
    try:
        _wait_polling(api_url, pool, name, log)
    except BaseException:
        processes.stop([(started.pid, marker)])
        raise
    return started.pid


def _wait_polling(api_url: str, pool: str, name: str, log: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def seen() -> bool:
        async with get_client() as client:
            workers = await client.read_workers_for_work_pool(pool)
        return any(w.name == name for w in workers)

    deadline = time.monotonic() + READY_TIMEOUT
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        while time.monotonic() < deadline:
            try:
                if asyncio.run(seen()):
                    return
            except Exception:  # noqa: S110 - the pool may not exist yet
                pass
            time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise SandboxError(
        f"worker {name} on pool {pool} did not poll within {READY_TIMEOUT:.0f}s:\n{tail}"
    )


def register_deployments(root: Path, api_url: str) -> list[str]:
    """Create the sandbox pool and register the sandbox's deployments; their names."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.deploy import deploy_environment
    from meshflow.spec import MeshSpec

    spec = MeshSpec.from_yaml(root / "mesh.yaml")
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        result = asyncio.run(deploy_environment(spec.environment, spec, job_env=job_env(root)))
    return [d.name for d in result.deployments]
