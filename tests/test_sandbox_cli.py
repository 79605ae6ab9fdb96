"""`meshflow sandbox up / status --json / verify / down`, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import processes
from sandbox.stack import Sandbox


def _meshflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _sandbox_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A sandbox folder under ``tmp_path`` and the environment that points the CLI at it."""
    state = tmp_path / "sandbox"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return state, env | {"MESHFLOW_SANDBOX_DIR": str(state)}


@pytest.mark.e2e
def test_sandbox_up_status_verify_down_leaves_nothing(tmp_path: Path) -> None:
    state, env = _sandbox_env(tmp_path)
    try:
        up = _meshflow("sandbox", "up", "--clusters", "1", env=env)
        assert up.returncode == 0, up.stderr[-2000:]
        assert "cluster-1" in up.stdout

        status = json.loads(_meshflow("sandbox", "status", "--json", env=env).stdout)
        assert status["running"] is True
        assert status["prefect_api_url"].startswith("http://127.0.0.1:")
        assert Path(status["emulator_ca_bundle"]).exists()
        (cluster,) = status["clusters"]
        assert cluster["name"] == "cluster-1"
        assert cluster["api_server"].startswith("https://127.0.0.1:")
        assert Path(cluster["admin_kubeconfig"]).exists()

        verify = _meshflow("verify", "--env", "sandbox", env=env)
        assert verify.returncode == 0, verify.stderr[-2000:]
        assert "access verified for sandbox" in verify.stdout

        again = _meshflow("sandbox", "up", "--clusters", "2", env=env)
        assert again.returncode == 1
        assert "meshflow sandbox down" in again.stderr  # tells the user what to do
    finally:
        down = _meshflow("sandbox", "down", env=env)
    assert down.returncode == 0
    assert processes.running_under(str(state)) == []
    assert not state.exists()  # no key or token of the sandbox left on disk


@pytest.mark.e2e
def test_a_stopped_sandbox_process_is_named_with_what_to_do(tmp_path: Path) -> None:
    state = tmp_path / "sandbox"
    cluster_dir = state / "clusters" / "cluster-1"
    sleeping = {
        name: processes.spawn(
            name, ["sleep", "60"], log=tmp_path / f"{name}.log", marker=marker, cwd=tmp_path
        )
        for name, marker in [
            ("etcd", str(cluster_dir)),
            ("kube-apiserver", str(cluster_dir)),
            ("kube-controller-manager", str(cluster_dir)),
            ("emulator", str(state)),
        ]
    }
    pid = {name: s.pid for name, s in sleeping.items()}
    state.mkdir()
    cluster_pids = [pid[name] for name in ("etcd", "kube-apiserver", "kube-controller-manager")]
    cluster = {"name": "cluster-1", "directory": str(cluster_dir), "pids": cluster_pids}
    recorded = {"clusters": [cluster], "emulator": {"pid": pid["emulator"]}}
    (state / "state.json").write_text(json.dumps(recorded))
    env = {**os.environ, "MESHFLOW_SANDBOX_DIR": str(state)}
    try:
        assert Sandbox(state).stopped() == []
        processes.stop([(pid["kube-apiserver"], str(cluster_dir))])

        assert Sandbox(state).stopped() == [
            f"cluster-1 kube-apiserver (pid {pid['kube-apiserver']})"
        ]
        verify = _meshflow("verify", "--env", "sandbox", env=env)
        assert verify.returncode == 1
        assert f"cluster-1 kube-apiserver (pid {pid['kube-apiserver']}) stopped" in verify.stderr
        assert "meshflow sandbox up" in verify.stderr
    finally:
        processes.stop([(s.pid, s.marker) for s in sleeping.values()])


def _run_deployment(api_url: str, name: str, timeout: float = 300.0) -> tuple[str, list[str]]:
    """Start a run of deployment ``name`` through the API, as the UI's Run button does.

    Returns its final state's type and its log messages.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def run() -> tuple[str, list[str]]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(name)
            created = await client.create_flow_run_from_deployment(deployment.id)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                found = await client.read_flow_run(created.id)
                if found.state is not None and found.state.is_final():
                    logs = await client.read_logs(
                        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[created.id]))
                    )
                    return found.state.type.value, [log.message for log in logs]
                await asyncio.sleep(1)
            raise AssertionError(f"{name}: not finished after {timeout:.0f}s ({found.state})")

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(run())


@pytest.mark.e2e
def test_the_sandbox_is_a_working_prefect_installation(tmp_path: Path) -> None:
    """`sandbox up` gives a pool, a worker and deployments; runs started through the API complete.

    The install's first stage is the real `terraform apply` of infra/sandbox; the next install,
    run by the sandbox's worker from its deployment, plans no change.
    """
    state, env = _sandbox_env(tmp_path)
    try:
        up = _meshflow("sandbox", "up", "--clusters", "1", env=env)
        assert up.returncode == 0, up.stderr[-2000:]
        assert "work pool       meshflow-sandbox (a worker running)" in up.stdout
        status = json.loads(_meshflow("sandbox", "status", "--json", env=env).stdout)
        assert status["worker_running"] is True

        install = _meshflow("install", "--env", "sandbox", env=env)
        assert install.returncode == 0, install.stderr[-2000:]
        lines = install.stdout.splitlines()
        assert lines[0].startswith(
            "infrastructure infra/sandbox: applied (2 to add"
        )  # a cluster and the vault
        assert f"the run: {status['prefect_ui_url']}/runs/flow-run/" in install.stdout

        api = status["prefect_api_url"]
        outcome, logs = _run_deployment(api, "install-mesh/install-mesh-sandbox")
        assert outcome == "COMPLETED", logs[-5:]
        assert "infrastructure infra/sandbox: no changes" in logs
        outcome, logs = _run_deployment(api, "verify-mesh/verify-mesh-sandbox")
        assert outcome == "COMPLETED", logs[-5:]
    finally:
        down = _meshflow("sandbox", "down", env=env)
    assert down.returncode == 0
    assert processes.running_under(str(state)) == []
