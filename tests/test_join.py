"""The join's threads: every item of an exchange or check runs, and the error raised is the one
the retry policy should see.

The join itself is tested through the real flows: with a failing cluster in
``test_install_flow.py`` and with a remote secret refused by an API server in
``test_forced_failures.py``.
"""

from __future__ import annotations

import contextvars

import pytest

from meshflow.errors import InvalidError, TransientError
from tasks.kube import _each


def test_each_runs_every_item_and_raises_the_retryable_failure() -> None:
    done: list[int] = []

    def step(i: int) -> int:
        done.append(i)
        if i == 1:
            raise InvalidError("cluster 'one': Secret istio-system/x was rejected (HTTP 422)")
        if i == 2:
            raise TransientError("cluster 'two': HTTP 503", status=503)
        return i * 10

    with pytest.raises(TransientError) as raised:
        _each(step, [0, 1, 2, 3])
    assert sorted(done) == [0, 1, 2, 3]  # nothing was left undone by the failures
    assert raised.value.status == 503  # transient: the task's retry policy retries it
    assert raised.value.__notes__ == [
        "also failed: InvalidError: cluster 'one': Secret istio-system/x was rejected (HTTP 422)"
    ]
    assert _each(lambda i: i * 10, [0, 3]) == [0, 30]


def test_each_carries_the_callers_context() -> None:
    # Prefect's run context and temporary settings (the API URL) travel in context variables.
    run = contextvars.ContextVar[str]("run")
    run.set("task-run-1")
    assert _each(lambda _: run.get(), [1, 2, 3]) == ["task-run-1"] * 3
