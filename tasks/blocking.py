"""Where tasks run the SDKs' blocking calls: a thread pool sized for waiting, not for cores.

The Azure and Kubernetes SDKs block; async tasks hand their calls to threads so that clusters
proceed concurrently. ``asyncio.to_thread`` uses the event loop's default executor, which has
``min(32, cores + 4)`` threads: 6 on a 2-core runner. Those calls mostly wait on the network
(an ``istioctl install`` waits minutes for istiod), so with a few clusters every thread was
taken and the next cluster's credentials, namespaces or install queued behind the others
(measured: a 10 ms block read took 1.6 s during a 4-cluster install). The threads here cost
little while they wait; the bound only keeps a very large fleet from opening thousands of
connections at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

IO_THREADS = 64
"""At most this many blocking calls run at once in one flow process."""

P = ParamSpec("P")
T = TypeVar("T")

_pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="meshflow-io")


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``await fn(*args, **kwargs)`` on an I/O thread, in the caller's context (as ``to_thread``).

    The context carries Prefect's run context, so logs from ``fn`` land in the right task run.
    """
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool, call)
