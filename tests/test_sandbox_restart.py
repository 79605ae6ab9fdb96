"""`meshflow sandbox up` on a half-stopped sandbox restarts what stopped, in place.

One real 2-cluster sandbox (PostgreSQL-backed Prefect server) in a temporary folder, driven by
the CLI as a user drives it. Processes are killed with SIGKILL (no clean-up of their own); `up`
must bring each back at the URL the saved blocks hold, with its data: etcd's objects, the
emulated Key Vault's mesh CA, the Prefect database's blocks. The tests run in file order on the
same sandbox; the last one replaces it with ``--reset``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client, config

from sandbox import processes
from sandbox.prefect_server import DEFAULT_PORT

pytestmark = pytest.mark.e2e


class Cli:
    """Runs ``meshflow`` against one sandbox folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        self.env["MESHFLOW_SANDBOX_DIR"] = str(state_dir)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=self.env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, f"meshflow {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "state.json").read_text()))


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """A running 2-cluster sandbox; at the end `down` must leave no process and no data."""
    cli = Cli(tmp_path_factory.mktemp("restart") / "sandbox")
    pg_dirs: list[Path] = []
    try:
        with _holding(DEFAULT_PORT):  # other sandboxes on this machine want 4200 too; while
            cli.ok("sandbox", "up", "--clusters", "2")  # ours is killed, one could take it
        yield cli
    finally:
        if (cli.state_dir / "state.json").exists() and cli.state().get("postgres"):
            pg_dirs.append(Path(cli.state()["postgres"]["directory"]))
        down = cli("sandbox", "down")
        assert down.returncode == 0, down.stderr
        assert processes.running_under(str(cli.state_dir)) == []
        assert not cli.state_dir.exists()
        assert not any(d.exists() for d in pg_dirs)


@contextlib.contextmanager
def _holding(port: int) -> Iterator[None]:
    """Listen on ``port`` meanwhile, if it is free (else someone else already holds it)."""
    with socket.socket() as sock:
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield


def _kill(pid: int, marker: str) -> None:
    assert processes.is_running(pid, marker)
    os.kill(pid, signal.SIGKILL)
    for _ in range(3000):  # until it has closed its files and ports (milliseconds, usually)
        if processes.has_exited(pid):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} survived SIGKILL")


def _core(cluster: dict[str, Any]) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=cluster["admin_kubeconfig"]))


def _pids(state: dict[str, Any]) -> dict[str, int]:
    pids = {f"{c['name']} {i}": pid for c in state["clusters"] for i, pid in enumerate(c["pids"])}
    return pids | {k: state[k]["pid"] for k in ("emulator", "prefect", "postgres")}


def test_it_runs_on_postgresql_by_default(cli: Cli) -> None:
    state = cli.state()
    assert state["prefect"]["database"] == "postgres"
    assert processes.is_running(state["postgres"]["pid"], str(cli.state_dir))


def test_a_killed_api_server_comes_back_at_its_url_with_its_objects(cli: Cli) -> None:
    before = cli.state()
    cluster = before["clusters"][1]
    _core(cluster).create_namespace({"metadata": {"name": "kept-across-restart"}})
    _kill(cluster["pids"][1], cluster["directory"])
    status = cli.ok("sandbox", "status")
    assert "stopped: cluster-2 kube-apiserver" in status

    out = cli.ok("sandbox", "up")

    assert "restarted: cluster-2 kube-apiserver\n" in out
    after = cli.state()
    assert after["clusters"][1]["api_url"] == cluster["api_url"]
    changed = {k for k, pid in _pids(after).items() if pid != _pids(before)[k]}
    assert changed == {"cluster-2 1"}  # only the API server was started again
    ns = _core(after["clusters"][1]).read_namespace("kept-across-restart")  # same token, CA
    assert ns.metadata.name == "kept-across-restart"
    audit = Path(cluster["audit_log"]).read_text()
    assert '"name":"kept-across-restart"' in audit.replace(" ", "")  # appended, not truncated


def test_a_killed_emulator_comes_back_at_its_url_with_the_mesh_ca(cli: Cli, tmp_path: Path) -> None:
    cli.ok("pki", "ensure", "--env", "sandbox")
    cli.ok("pki", "export", "--env", "sandbox", "--out", str(tmp_path / "before"))
    before = cli.state()
    _kill(before["emulator"]["pid"], str(cli.state_dir))

    out = cli.ok("sandbox", "up")

    assert "restarted: emulator\n" in out
    assert cli.state()["emulator"]["url"] == before["emulator"]["url"]
    cli.ok("pki", "export", "--env", "sandbox", "--out", str(tmp_path / "after"))
    root = "root-cert.pem"
    assert (tmp_path / "after" / root).read_text() == (tmp_path / "before" / root).read_text()
    assert "mesh PKI for sandbox: 0 new versions" in cli.ok("pki", "ensure", "--env", "sandbox")
    cli.ok("verify", "--env", "sandbox")  # the saved blocks (URLs, secret, CA) still work


def test_after_a_killed_api_server_an_install_converges_on_the_same_root(
    cli: Cli, tmp_path: Path
) -> None:
    assert " writes; the run: " in cli.ok("install", "--env", "sandbox")
    cli.ok("pki", "export", "--env", "sandbox", "--out", str(tmp_path / "before"))
    cluster = cli.state()["clusters"][0]
    _kill(cluster["pids"][1], cluster["directory"])

    assert "restarted: cluster-1 kube-apiserver\n" in cli.ok("sandbox", "up")
    out = cli.ok("install", "--env", "sandbox")

    assert "  0 writes; the run: " in out  # converged: the cluster kept everything
    cli.ok("pki", "export", "--env", "sandbox", "--out", str(tmp_path / "after"))
    root = "root-cert.pem"  # the vault kept its root version: the same root certificate
    assert (tmp_path / "after" / root).read_text() == (tmp_path / "before" / root).read_text()
    # The sandbox runs Istio's production profile: RSA 4096 CA keys, made by Key Vault.
    cert = x509.load_pem_x509_certificate((tmp_path / "after" / root).read_bytes())
    assert cert.public_key().key_size == 4096  # type: ignore[union-attr]
    ca = x509.load_pem_x509_certificate(
        (tmp_path / "after" / "cluster-1" / "ca-cert.pem").read_bytes()
    )
    assert ca.public_key().key_size == 4096  # type: ignore[union-attr]


def test_a_killed_database_and_prefect_server_come_back_with_the_blocks(cli: Cli) -> None:
    before = cli.state()
    _kill(before["prefect"]["pid"], str(cli.state_dir))
    _kill(before["postgres"]["pid"], str(cli.state_dir))

    out = cli.ok("sandbox", "up")

    assert "restarted: postgres, prefect\n" in out
    assert cli.state()["prefect"]["api_url"] == before["prefect"]["api_url"]
    assert "access verified for sandbox" in cli.ok("verify", "--env", "sandbox")


def test_a_recorded_port_taken_by_another_program_is_named(cli: Cli) -> None:
    cluster = cli.state()["clusters"][0]
    _core(cluster).create_namespace({"metadata": {"name": "kept-in-etcd"}})
    etcd_port = cluster["etcd_port"]
    _kill(cluster["pids"][0], cluster["directory"])
    with socket.socket() as squatter:  # another program, listening as servers do
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", etcd_port))
        squatter.listen()
        refused = cli("sandbox", "up")
    assert refused.returncode == 1
    assert f"cluster-1 etcd cannot listen on its port 127.0.0.1:{etcd_port}" in refused.stderr
    assert f"pid {os.getpid()} (" in refused.stderr
    assert "meshflow sandbox up --reset" in refused.stderr

    out = cli.ok("sandbox", "up")  # the port is free again

    assert "restarted: cluster-1 etcd\n" in out
    assert _core(cli.state()["clusters"][0]).read_namespace("kept-in-etcd").metadata


def test_up_with_nothing_stopped_changes_nothing(cli: Cli) -> None:
    before = cli.state()
    assert "nothing to restart" in cli.ok("sandbox", "up")
    assert "nothing to restart" in cli.ok("sandbox", "up", "--clusters", "2")
    assert cli.state() == before


def test_another_cluster_count_is_refused_with_what_to_do(cli: Cli) -> None:
    before = cli.state()
    refused = cli("sandbox", "up", "--clusters", "1")
    assert refused.returncode == 1
    assert "`meshflow sandbox up --reset --clusters 1`" in refused.stderr
    assert "`meshflow sandbox down`" in refused.stderr
    assert cli.state() == before


def test_reset_gives_a_fresh_sandbox(cli: Cli) -> None:
    before = cli.state()
    old_ca = Path(before["clusters"][0]["ca_bundle"]).read_bytes()

    out = cli.ok("sandbox", "up", "--reset", "--clusters", "1")

    assert "--reset: deleting the sandbox" in out
    after = cli.state()
    assert len(after["clusters"]) == 1
    assert not any(processes.is_running(pid, str(cli.state_dir)) for pid in
                   (before["emulator"]["pid"], before["prefect"]["pid"]))  # fmt: skip
    assert Path(after["clusters"][0]["ca_bundle"]).read_bytes() != old_ca
    with pytest.raises(client.ApiException) as err:
        _core(after["clusters"][0]).read_namespace("kept-in-etcd")
    assert err.value.status == 404
    assert (
        cli(
            "pki", "export", "--env", "sandbox", "--out", str(cli.state_dir.parent / "x")
        ).returncode
        == 1
    )
