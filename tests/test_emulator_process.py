"""``python -m sandbox.azure`` starts, announces itself, serves SDK calls, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient
from azure.mgmt.containerservice import ContainerServiceClient

from sandbox import processes
from sandbox.azure.admin import start_emulator_process
from tests.emulator_fixtures import CLIENT_ID, SUBSCRIPTION

pytestmark = pytest.mark.emulator
KUBECONFIG = "apiVersion: v1\nkind: Config\n"


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            raise AssertionError(f"emulator exited early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError("emulator.json never appeared")


def test_process_mode(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "clients": [{"client_id": CLIENT_ID, "secret": "s"}],
                "clusters": [
                    {
                        "subscription": SUBSCRIPTION,
                        "resourceGroup": "rg",
                        "name": "aks-proc",
                        "location": "westeurope",
                        "admin_kubeconfig": KUBECONFIG,
                        "user_kubeconfig": KUBECONFIG,
                        "fqdn": "aks-proc.example",
                        "aad": False,
                    }
                ],
            }
        )
    )
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.azure", "--state-dir", str(state), "--config", str(config)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        info = _wait_for(state / "emulator.json", proc)
        assert info["pid"] == proc.pid
        url, ca = str(info["url"]), str(info["ca_bundle"])
        credential = ClientSecretCredential(
            str(info["tenant_id"]),
            CLIENT_ID,
            "s",
            authority=url,
            disable_instance_discovery=True,
            connection_verify=ca,
        )
        client = ContainerServiceClient(
            credential, SUBSCRIPTION, base_url=url, connection_verify=ca
        )
        creds = client.managed_clusters.list_cluster_admin_credentials("rg", "aks-proc")
        assert (creds.kubeconfigs or [])[0].value == KUBECONFIG.encode()
        client.close()
        credential.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not (state / "emulator.json").exists()
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_admin_client_against_a_process(tmp_path: Path) -> None:
    marker = str(tmp_path)
    admin = start_emulator_process(tmp_path / "azure", marker=marker)
    tenant = json.loads((tmp_path / "azure" / "emulator.json").read_text())["tenant_id"]
    try:
        admin.register_client("app-over-http", "its-secret")
        admin.record_bodies(True)
        with (
            ClientSecretCredential(
                tenant, "app-over-http", "its-secret", authority=admin.url,
                disable_instance_discovery=True, connection_verify=str(admin.ca_bundle),
            ) as credential,
            SecretClient(admin.url, credential, connection_verify=str(admin.ca_bundle)) as client,
        ):  # fmt: skip
            client.set_secret("over-http", "v")
        log = admin.requests_log()
        assert isinstance(log, list)
        assert all(isinstance(e, dict) for e in log)
        puts = [e for e in log if e["path"] == "/secrets/over-http"]
        assert [e["status"] for e in puts] == [401, 200]
        assert json.loads(puts[-1]["request_body"]) == {"value": "v"}
        assert {k.lower(): v for k, v in puts[-1]["request_headers"].items()}[
            "authorization"
        ] == "Bearer"
        assert all(not e["path"].startswith("/_emulator") for e in log)
        admin.clear_log()
        assert admin.requests_log() == []
    finally:
        processes.stop(processes.running_under(marker))
