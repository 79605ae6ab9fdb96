"""Shared fixtures: real local control planes, the Azure emulator, a real Prefect server.

Session-scoped and started once; every process is stopped at teardown, also when a test fails or
the run is interrupted (finalizers run on KeyboardInterrupt, and an atexit hook backs them up).
"""

from __future__ import annotations

import atexit
import os
import signal
from collections.abc import Iterator
from pathlib import Path

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
