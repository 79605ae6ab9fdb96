"""Shared fixtures: real local control planes, the Azure emulator, a real Prefect server.

Session-scoped and started once; every process is stopped at teardown, also when a test fails or
the run is interrupted (finalizers run on KeyboardInterrupt, and an atexit hook backs them up).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from sandbox import kube, processes  # noqa: E402

pytest_plugins = ["tests.emulator_fixtures"]

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
