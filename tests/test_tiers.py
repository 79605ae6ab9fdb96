"""The tiers: which marker a test gets from its fixtures, and that a pure test starts no process."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import subprocess

import pytest

from tests import conftest
from tests.conftest import ProcessOutsideTier, processes_refused, tiers_of

MESSAGE = r"this test starts a process \(.*\): mark it kube/emulator/prefect/e2e"


@pytest.mark.parametrize(
    ("fixtures", "tiers"),
    [
        ((), set()),
        (("tmp_path", "monkeypatch"), set()),
        (("kube_clusters", "kube_root"), {"kube"}),
        (("four_planes",), {"kube"}),
        (("istioctl_standin",), {"kube"}),
        (("emulator", "azure_emulator"), {"emulator"}),
        (("secret_client", "azure_credential", "azure_emulator"), {"emulator"}),
        (("prefect_server",), {"prefect"}),
        (("azure_emulator", "prefect_server"), {"emulator", "prefect"}),
        (("kube_root", "azure_emulator", "prefect_server"), {"kube", "emulator", "prefect", "e2e"}),
        (("mesh_env",), {"kube", "emulator", "prefect", "e2e"}),
    ],
)
def test_a_test_gets_the_tiers_of_its_fixture_closure(
    fixtures: tuple[str, ...], tiers: set[str]
) -> None:
    assert tiers_of(fixtures) == tiers


def test_every_collected_test_carries_the_tiers_of_its_fixtures(
    request: pytest.FixtureRequest,
) -> None:
    wrong = [
        item.nodeid
        for item in request.session.items
        if not all(item.get_closest_marker(t) for t in tiers_of(getattr(item, "fixturenames", ())))
    ]
    assert wrong == []


def test_the_emulator_fixtures_all_lead_to_the_emulator(request: pytest.FixtureRequest) -> None:
    # Each client fixture's closure holds azure_emulator, so its tests are in the emulator tier.
    names = ["emulator", "azure_credential", "secret_client", "certificate_client", "key_client"]
    names += ["aks_client", "network_client", "msi_client", "authorization_client"]
    names += ["keyvault_mgmt_client"]
    manager = request.session._fixturemanager
    for name in names:
        closure = manager.getfixtureclosure(
            parentnode=request.node, initialnames=(name,), ignore_args=set()
        )[0]
        assert "emulator" in tiers_of(closure), name


def test_this_pure_test_runs_with_processes_refused() -> None:
    # (Trying one here would fail this test: that is the point.)
    for start in (vars(subprocess.Popen)["_execute_child"], os.fork, os.posix_spawn, os.system):
        assert start.__name__ == "refuse"


@pytest.mark.emulator  # a test in a tier may start processes (this one only looks)
def test_a_test_in_a_tier_may_start_processes() -> None:
    assert vars(subprocess.Popen)["_execute_child"].__name__ == "_execute_child"


def _child() -> None:
    """A process target; never runs here."""


async def _async_subprocess() -> None:
    await asyncio.create_subprocess_exec("true")


@pytest.mark.parametrize(
    ("start", "attempt"),
    [
        (lambda: subprocess.run(["true"], check=False), "_execute_child(true)"),
        (lambda: os.popen("true"), "_execute_child(true)"),  # noqa: S605 - refused
        (lambda: asyncio.run(_async_subprocess()), "_execute_child(true)"),
        (lambda: os.system("true"), "system(true)"),  # noqa: S605 - refused
        (lambda: os.spawnlp(os.P_WAIT, "true", "true"), "fork()"),  # noqa: S606 - refused
        (lambda: multiprocessing.get_context("fork").Process(target=_child).start(), "fork()"),
        (
            lambda: multiprocessing.get_context("spawn").Process(target=_child).start(),
            "fork_exec(",
        ),
    ],
    ids=["subprocess", "os.popen", "asyncio", "os.system", "os.spawn", "mp-fork", "mp-spawn"],
)
def test_every_way_to_start_a_process_is_refused(start: object, attempt: str) -> None:
    attempts: list[str] = []
    with processes_refused(attempts), pytest.raises(ProcessOutsideTier, match=MESSAGE):
        start()  # type: ignore[operator]
    assert len(attempts) == 1
    assert attempts[0].startswith(attempt)


def _start_and_swallow_the_error() -> None:
    with contextlib.suppress(ProcessOutsideTier):
        subprocess.run(["true"], check=False)


def test_a_refusal_the_code_caught_still_fails_the_test(request: pytest.FixtureRequest) -> None:
    with (
        pytest.raises(ProcessOutsideTier, match=r"_execute_child\(true\)"),
        conftest.pure(request.node),
    ):
        _start_and_swallow_the_error()
