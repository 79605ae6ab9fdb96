"""The I/O thread pool of the tasks: blocking SDK calls wait side by side, not per core."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from pathlib import Path

from tasks.blocking import IO_THREADS, run_blocking

TASKS = Path(__file__).resolve().parent.parent / "tasks"


def test_more_waits_than_the_default_executor_has_threads_run_together() -> None:
    # Each call waits at a barrier for all the others, so all must run at once. The loop's
    # default executor (asyncio.to_thread) has min(32, cores + 4) threads and would break it.
    n = min(32, (os.cpu_count() or 1) + 4) + 4
    assert n <= IO_THREADS
    barrier = threading.Barrier(n, timeout=10)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(run_blocking(barrier.wait) for _ in range(n))))

    assert sorted(asyncio.run(main())) == list(range(n))


def test_the_callers_context_goes_along() -> None:
    # Prefect's run context travels in context variables: logs must reach the right task run.
    run = contextvars.ContextVar[str]("run")

    async def main() -> str:
        run.set("task-run-1")
        return await run_blocking(run.get)

    assert asyncio.run(main()) == "task-run-1"


def test_tasks_hand_blocking_calls_to_the_io_pool() -> None:
    offenders = [
        p.name
        for p in TASKS.glob("*.py")
        if p.name != "blocking.py" and "to_thread(" in p.read_text()
    ]
    assert offenders == []
