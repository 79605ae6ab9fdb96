"""Which failures are worth retrying, in one place.

Policy (applies to every meshflow task):

- **Transient, retried with backoff**: HTTP 408, 429 and 5xx from Azure or a Kubernetes API
  server, 409 Conflict from a Kubernetes update race (optimistic concurrency), connection resets
  and timeouts. The Azure SDKs already retry 429/5xx internally honouring ``Retry-After``; the task
  retry is the outer, slower layer for outages that outlast the SDK's own retries.
- **Permanent, failed at once**: 400, 401, 403, 404, 422 and every error raised for bad input
  (``ValueError`` and subclasses). Retrying them only delays the message the user needs.
"""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from kubernetes.client.exceptions import ApiException
from prefect.client.schemas.objects import State
from urllib3.exceptions import HTTPError as Urllib3Error

TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})

RETRY_DELAYS = [1.0, 2.0, 4.0, 8.0]
"""Seconds between task attempts: 4 retries, about 15 s in all, jittered by Prefect."""


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, HttpResponseError):
        return exc.status_code
    if isinstance(exc, ApiException):
        return int(exc.status) if exc.status else None
    return getattr(exc, "status", None) if isinstance(getattr(exc, "status", None), int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it was raised from) is worth another attempt."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ValueError):
            return False
        if isinstance(current, ServiceRequestError | ServiceResponseError | Urllib3Error):
            return True
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        status = _status(current)
        if status is not None:
            return status in TRANSIENT_HTTP or (isinstance(current, ApiException) and status == 409)
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
