"""The join of install-mesh: who exchanges and checks what when something failed, in isolation.

The end-to-end behaviour is in test_install_flow.py; here the steps are replaced by recorders so
each failure case is exact and fast.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from flows import install
from meshflow.errors import InvalidError, TransientError
from meshflow.spec import MeshSpec
from tasks.kube import _each

SPEC = MeshSpec.model_validate(
    {
        "environment": "dev",
        "credentials_block": "dev",
        "key_vault_block": "dev",
        "clusters": [{"name": n, "aks_block": f"dev-{n}"} for n in ("one", "two", "three")],
    }
)


def _done(value: Any = None, error: BaseException | None = None) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
    return future


def _join(
    monkeypatch: pytest.MonkeyPatch, *, failed_install: str = "", failed_exchange: str = ""
) -> dict[str, list[str]]:
    """Run the join with every install done (one may fail); what each step was asked to do."""
    calls: dict[str, list[str]] = {}

    async def exchange(_block: str, source: str, targets: list[tuple[str, str]]) -> list[Any]:
        calls[f"exchange-from-{source}"] = [t for _, t in targets]
        if source == failed_exchange:
            raise InvalidError(f"cluster {targets[0][1]!r}: the write was rejected")
        return []

    async def check(source: str, targets: list[tuple[str, str]]) -> list[Any]:
        calls[f"check-of-{source}"] = [t for _, t in targets]
        return []

    monkeypatch.setattr(install, "exchange_remote_secrets", exchange)
    monkeypatch.setattr(install, "check_remote_secrets", check)

    async def main() -> None:
        installed = {
            c.name: _done(error=RuntimeError("credentials refused"))
            if c.name == failed_install
            else _done()
            for c in SPEC.clusters
        }
        exchanged = {
            c.name: asyncio.ensure_future(install._exchange_from(SPEC, installed, c))
            for c in SPEC.clusters
        }
        checks = [
            asyncio.ensure_future(install._check_from(SPEC, installed, exchanged, c))
            for c in SPEC.clusters
        ]
        await asyncio.wait([*exchanged.values(), *checks])
        for step in [*installed.values(), *exchanged.values(), *checks]:
            step.exception()  # retrieved: install_mesh raises the first one

    asyncio.run(main())
    return calls


def test_every_cluster_exchanges_with_and_checks_every_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _join(monkeypatch) == {
        "exchange-from-one": ["two", "three"],
        "exchange-from-two": ["one", "three"],
        "exchange-from-three": ["one", "two"],
        "check-of-one": ["two", "three"],
        "check-of-two": ["one", "three"],
        "check-of-three": ["one", "two"],
    }


def test_a_cluster_that_failed_to_install_is_left_out_of_the_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _join(monkeypatch, failed_install="three") == {
        "exchange-from-one": ["two"],
        "exchange-from-two": ["one"],
        "check-of-one": ["two"],
        "check-of-two": ["one"],
    }


def test_a_failed_exchange_still_has_its_secrets_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The exchange from one failed (say its write into two): one's secret is still looked for
    # everywhere and reported missing where it is, instead of silently skipped.
    calls = _join(monkeypatch, failed_exchange="one")
    assert calls["check-of-one"] == ["two", "three"]


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
