"""Transient failures are retried, permanent ones fail at once."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError

from tasks.retry import is_transient


def _azure(status: int) -> HttpResponseError:
    err = HttpResponseError(message=f"HTTP {status}")
    err.status_code = status
    return err


def _wrapped(inner: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("task failed") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_azure(429), True),
        (_azure(500), True),
        (_azure(503), True),
        (_azure(408), True),
        (_azure(400), False),
        (_azure(403), False),
        (_azure(404), False),
        (_azure(409), False),  # ARM 409 means "exists"/"conflicting state": not a race
        (ApiException(status=409, reason="Conflict"), True),  # optimistic-concurrency race
        (ApiException(status=422, reason="Unprocessable"), False),
        (ApiException(status=503, reason="Unavailable"), True),
        (ServiceRequestError("connection reset"), True),
        (MaxRetryError(None, "/", "timeout"), True),  # type: ignore[arg-type]
        (ConnectionResetError(), True),
        (ValueError("bad input"), False),
        (_wrapped(_azure(503)), True),
        (_wrapped(ValueError("bad")), False),
        (RuntimeError("unknown"), False),
    ],
)
def test_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
