"""What ``Sandbox.up`` decides from the recorded state, and the command lines it restarts with.

No real sandbox here: recorded processes are ``sleep`` stand-ins (or dead PIDs).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import certs, kube, postgres, processes, stack
from sandbox.kube import ClusterLayout, LocalCluster, SandboxError
from sandbox.stack import Sandbox

LAYOUT = ClusterLayout(
    Path("/state/clusters/cluster-1"), etcd_port=2379, peer_port=2380, api_port=6443
)


def test_a_cluster_is_restarted_with_the_command_lines_of_its_first_start() -> None:
    cluster = LocalCluster("cluster-1", LAYOUT, pids=(11, 12, 13))
    recorded = LocalCluster.from_json(json.loads(json.dumps(cluster.to_json())))
    assert recorded == cluster
    bins = Path("/bins")
    for proc in kube.PROCESSES:
        assert kube.command_line(proc, recorded.layout, bins) == kube.command_line(
            proc, cluster.layout, bins
        )


def test_command_lines_use_the_recorded_ports_data_and_credentials() -> None:
    etcd = kube.command_line("etcd", LAYOUT, Path("/bins"))
    assert etcd[etcd.index("--data-dir") + 1] == "/state/clusters/cluster-1/etcd"
    assert "http://127.0.0.1:2379" in etcd
    assert "default=http://127.0.0.1:2380" in etcd
    api = kube.command_line("kube-apiserver", LAYOUT, Path("/bins"))
    assert api[0] == "/bins/kube-apiserver"
    assert {
        "--etcd-servers=http://127.0.0.1:2379",
        "--secure-port=6443",
        "--token-auth-file=/state/clusters/cluster-1/tokens.csv",
        "--audit-log-path=/state/clusters/cluster-1/audit.log",
        "--tls-cert-file=/state/clusters/cluster-1/pki/server.pem",
    } <= set(api)
    assert LAYOUT.ports("kube-apiserver") == (6443,)
    assert LAYOUT.ports("etcd") == (2379, 2380)


def test_the_layout_names_the_tls_files_that_certs_writes(tmp_path: Path) -> None:
    layout = ClusterLayout(tmp_path, 1, 2, 3)
    assert certs.write_server_tls(layout.pki, ca_name="probe") == layout.tls


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Sandbox, dict[str, Any]]]:
    """A recorded 1-cluster sandbox whose processes are ``sleep`` stand-ins, all running."""
    sandbox = Sandbox(tmp_path / "sandbox")
    sandbox.root.mkdir()
    cluster_dir = sandbox.root / "clusters" / "cluster-1"

    def sleeper(marker: Path) -> int:
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        return processes.spawn(
            "s", argv, log=tmp_path / "s.log", marker=str(marker), cwd=tmp_path
        ).pid

    cluster = LocalCluster("cluster-1", ClusterLayout(cluster_dir, 1, 2, 3), pids=tuple(
        sleeper(cluster_dir) for _ in kube.PROCESSES
    ))  # fmt: skip
    state = {
        "version": stack.STATE_VERSION,
        "environment": "sandbox",
        "prefect": {"api_url": "http://127.0.0.1:9/api", "pid": sleeper(sandbox.root),
                    "database": "postgres", "port": 9},
        "postgres": None,
        "emulator": {"url": "https://127.0.0.1:10", "pid": sleeper(sandbox.root), "port": 10,
                     "ca_bundle": "ca.pem", "state_dir": str(sandbox.root / "azure")},
        "clusters": [cluster.to_json()],
    }  # fmt: skip
    sandbox.state_file.write_text(json.dumps(state))
    try:
        yield sandbox, state
    finally:
        processes.stop(processes.running_under(str(sandbox.root)))


@pytest.mark.kube
def test_up_with_everything_running_changes_nothing(
    recorded: tuple[Sandbox, dict[str, Any]],
) -> None:
    sandbox, state = recorded
    for count in (1, None):  # None: as many clusters as it has
        result = sandbox.up(count)
        assert (result.action, result.restarted) == ("unchanged", ())
    assert sandbox.state() == state


@pytest.mark.kube
@pytest.mark.parametrize("stop_one", [False, True], ids=["running", "half-stopped"])
def test_another_cluster_count_is_refused_with_what_to_do(
    recorded: tuple[Sandbox, dict[str, Any]], stop_one: bool
) -> None:
    sandbox, state = recorded
    if stop_one:
        processes.stop([(state["emulator"]["pid"], sandbox.marker)])
    with pytest.raises(SandboxError) as err:
        sandbox.up(2)
    assert "has 1 clusters, not 2" in str(err.value)
    assert "`meshflow sandbox up --reset --clusters 2`" in str(err.value)
    assert "`meshflow sandbox down`" in str(err.value)
    assert sandbox.state() == state  # nothing was wiped


@pytest.mark.kube
def test_another_database_is_refused_but_none_means_the_recorded_one(
    recorded: tuple[Sandbox, dict[str, Any]],
) -> None:
    sandbox, _ = recorded
    with pytest.raises(SandboxError, match=r"runs its Prefect server on postgres, not sqlite"):
        sandbox.up(1, database="sqlite")
    assert sandbox.up(1, database="postgres").action == "unchanged"
    assert sandbox.up(1).action == "unchanged"


@pytest.mark.kube
def test_a_state_without_ports_cannot_be_restarted_and_says_reset(
    recorded: tuple[Sandbox, dict[str, Any]],
) -> None:
    sandbox, state = recorded
    del state["version"]
    sandbox.state_file.write_text(json.dumps(state))
    processes.stop([(state["emulator"]["pid"], sandbox.marker)])
    with pytest.raises(SandboxError, match=r"older meshflow.*`meshflow sandbox up --reset`"):
        sandbox.up(1)
    assert sandbox.state() == state


def test_a_database_whose_data_folder_is_gone_says_reset(tmp_path: Path) -> None:
    with pytest.raises(
        SandboxError, match=r"data folder .* is gone.*`meshflow sandbox up --reset`"
    ):
        postgres.restart(
            tmp_path / "cleared-at-reboot", processes.free_port(), marker=str(tmp_path)
        )
    assert processes.running_under(str(tmp_path)) == []
