"""Which failures are worth retrying, in one place.

Policy (applies to every meshflow task): the kind of :class:`~meshflow.errors.MeshflowError`
decides, and kinds are assigned at the boundary to each external system (:mod:`tasks.sdk_errors`
maps statuses to kinds once).

- **Retried with backoff**: :class:`~meshflow.errors.TransientError` (HTTP 408, 429 and 5xx,
  refused or reset connections, timeouts) and :class:`~meshflow.errors.ConflictError` (a
  concurrent writer changed the object between our read and our write: the idempotent step
  reads again). The Azure SDKs already retry 429/5xx internally, honouring ``Retry-After``;
  the task retry is the outer, slower layer for outages that outlast the SDK's own retries.
- **Failed at once**: every other error, bad input and refusals (400, 401, 403, 404, 422) above
  all: retrying them only delays the message the user needs. So is anything that is not a
  meshflow error: the boundary never lets one out of a task, and a bug is not retried.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import State

from meshflow.errors import MeshflowError

RETRY_DELAYS = [1.0, 2.0, 4.0, 8.0]
"""Seconds between task attempts: 4 retries, about 15 s in all, jittered by Prefect."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or the meshflow error it was raised from) is worth another attempt."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MeshflowError):
            return current.retryable
        current = current.__cause__
    return False


def retry_if_transient(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient failures (see module docstring)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:
            exc = raised
    return exc is not None and is_transient(exc)


TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": len(RETRY_DELAYS),
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
}
"""Keyword arguments for ``@task`` that apply this policy."""
