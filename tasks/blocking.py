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
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import urllib3.exceptions
from azure.core.exceptions import AzureError
from kubernetes.client.exceptions import ApiException
from prefect import Task, task
from prefect.cache_policies import NO_CACHE, CachePolicy

from meshflow.errors import MeshflowError
from meshflow.istioctl import redact
from tasks.retry import TRANSIENT_RETRIES
from tasks.sdk_errors import from_azure

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


# -- The one way to make a Prefect task from blocking SDK code -------------------------------


def at_boundary(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``, with anything it raises made a :class:`MeshflowError`.

    meshflow's own errors pass unchanged; an SDK exception that no module turned into one is
    translated here (see :mod:`tasks.sdk_errors`); any other exception is a bug, reported as
    one with token-shaped text redacted. So what a task raises, and Prefect persists, holds no
    SDK object and no secret.
    """
    try:
        return fn(*args, **kwargs)
    except MeshflowError:
        raise
    except AzureError as exc:
        raise from_azure(exc, system="Azure", target="") from exc
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        raise MeshflowError(f"Kubernetes: {type(exc).__name__}", system="Kubernetes") from exc
    except Exception as exc:
        name = getattr(fn, "__name__", "task")
        raise MeshflowError(
            f"unexpected {type(exc).__name__} in {name}: {redact(str(exc))[:500]} "
            "(a meshflow bug: please report it with the run's log)"
        ) from exc


def blocking_task(
    name: str,
    *,
    task_run_name: str | None = None,
    cache_policy: CachePolicy = NO_CACHE,
    retry: bool = True,
) -> Callable[[Callable[P, T]], Task[P, Coroutine[Any, Any, T]]]:
    """Make an async Prefect task of a blocking function; the function's docstring is the task's.

    The task runs ``fn`` on the I/O pool (:func:`run_blocking`) with the shared retry policy
    (:mod:`tasks.retry`; ``retry=False`` for steps that must not repeat), the error boundary
    (:func:`at_boundary`) and results that are not persisted (they are references, and a run
    reads them in memory); were they persisted, they would be JSON, like the failure Prefect
    records (type and message only). ``fn`` stays importable and callable as ``task.fn``'s
    wrapped function for tests.
    """

    def make(fn: Callable[P, T]) -> Task[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            return await run_blocking(at_boundary, fn, *args, **kwargs)

        options: dict[str, Any] = dict(TRANSIENT_RETRIES) if retry else {}
        return task(  # type: ignore[call-overload,no-any-return]
            run,
            name=name,
            task_run_name=task_run_name,
            cache_policy=cache_policy,
            persist_result=False,
            result_serializer="json",
            **options,
        )

    return make
