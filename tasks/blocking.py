"""The one way to make a Prefect task of blocking SDK code, and the threads such code runs on.

The Azure and Kubernetes SDKs block; async tasks hand their calls to a thread pool sized for
waiting, not for cores (``IO_THREADS``), so clusters proceed concurrently: the event loop's
default executor has ``min(32, cores + 4)`` threads, which every cluster's waiting calls
exhaust at once (see ``docs/design.md``). :func:`blocking_task` wraps a function with that
pool, the retry policy, the error boundary and the result policy, in one place.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import urllib3.exceptions
from azure.core.exceptions import AzureError
from kubernetes.client.exceptions import ApiException
from prefect import Task, task
from prefect.cache_policies import NO_CACHE, CachePolicy

from blocks.runtime import RUNTIME
from meshflow.errors import MeshflowError
from meshflow.istioctl import redact
from tasks.retry import TRANSIENT_RETRIES
from tasks.sdk_errors import from_azure

IO_THREADS = 64
"""At most this many blocking calls run at once in one flow process."""

P = ParamSpec("P")
T = TypeVar("T")


async def run_blocking(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``await fn(*args, **kwargs)`` on an I/O thread, in the caller's context (as ``to_thread``).

    The context carries Prefect's run context, so logs from ``fn`` land in the right task run.
    """
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    pool = RUNTIME.pool("io", IO_THREADS)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


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
    cache_expiration: dt.timedelta | None = None,
    retry: bool = True,
) -> Callable[[Callable[P, T]], Task[P, Coroutine[Any, Any, T]]]:
    """Make an async Prefect task of a blocking function; the function's docstring is the task's.

    The task runs ``fn`` on the I/O pool (:func:`run_blocking`) with the shared retry policy
    (:mod:`tasks.retry`; ``retry=False`` for steps that must not repeat) and the error boundary
    (:func:`at_boundary`). Results are not persisted (they are references, read in memory),
    except where ``cache_policy`` caches them (Prefect reads a cached result back from its
    storage): those are public facts, stored as JSON. ``docs/tasks.md`` lists every task's
    retry and cache policy. ``fn`` itself stays importable, for tests and other tasks.
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
            cache_expiration=cache_expiration,
            persist_result=cache_policy is not NO_CACHE,
            result_serializer="json",
            **options,
        )

    return make
