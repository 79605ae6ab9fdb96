"""`meshflow sandbox up / status --json / verify / down`, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sandbox import processes


def _meshflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshflow", *args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_sandbox_up_status_verify_down_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "sandbox"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["MESHFLOW_SANDBOX_DIR"] = str(state)
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
