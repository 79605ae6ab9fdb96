"""Run the emulator as its own process, and drive it through its admin API.

:class:`EmulatorAdmin` has the same admin methods as the in-process
:class:`~sandbox.azure.AzureEmulator` (faults, request log, clients, clusters, dropping objects),
over HTTPS. A separate process is what the sandbox uses, and what benchmarks need: in-process, the
emulator's request handling would compete with the flow for the interpreter lock, which Azure,
being remote, never does.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from sandbox import processes


class EmulatorAdmin:
    """A client for a running emulator's ``/_emulator/`` admin API."""

    def __init__(self, url: str, ca_bundle: Path, pid: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.ca_bundle = ca_bundle
        self.pid = pid
        self._ctx = ssl.create_default_context(cafile=str(ca_bundle))

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - https URL of our own emulator
            f"{self.url}/_emulator/{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, context=self._ctx, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
        return json.loads(raw) if raw else None

    def requests_log(self) -> list[dict[str, Any]]:
        """Every non-admin request so far: method, path, status, ... (bodies if recorded)."""
        return list(self._call("GET", "requests")["requests"])

    def clear_log(self) -> None:
        """Forget the request log."""
        self._call("DELETE", "requests")

    def record_bodies(self, on: bool = True) -> None:
        """Record (or stop recording) bodies and headers in the request log, from now on."""
        self._call("PUT", "requests", {"bodies": on})

    def register_client(self, client_id: str, secret: str) -> None:
        """Register client application ``client_id``, or add ``secret`` to its secrets."""
        self._call("PUT", f"clients/{urllib.parse.quote(client_id, safe='')}", {"secret": secret})

    def add_fault(self, **rule: Any) -> None:
        """Add a fault rule (method, path regex, status, retry_after, times, delay_ms)."""
        self._call("POST", "faults", rule)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._call("DELETE", "faults")

    def make_keys(self, size: int, count: int) -> list[float]:
        """Have RSA keys of ``size`` bits made ahead until ``count`` wait; the seconds each took.

        For measurements: Key Vault's key generation then costs its latency, not this machine's
        CPU (see ``sandbox.azure.x509util``).
        """
        made = self._call("POST", "keys", {"size": size, "count": count}, timeout=120)["made"]
        return [float(s) for s in made]

    def keys_ready(self) -> dict[int, int]:
        """Keys made ahead and not yet used, per RSA key size."""
        return {int(size): int(n) for size, n in self._call("GET", "keys")["ready"].items()}

    def keys_made_on_demand(self) -> int:
        """How many RSA keys requests had the emulator make on demand so far."""
        return int(self._call("GET", "keys")["made_on_demand"])

    def register_cluster(
        self, subscription: str, resource_group: str, name: str, **spec: Any
    ) -> None:
        """Register an AKS cluster (location, admin_kubeconfig, user_kubeconfig, fqdn, aad)."""
        self._call("PUT", f"clusters/{subscription}/{resource_group}/{name}", spec)

    def register_vault(
        self, subscription: str, resource_group: str, name: str, **spec: Any
    ) -> None:
        """Register the mesh vault as an ARM resource (location, sku); its policies are kept."""
        self._call("PUT", f"vaults/{subscription}/{resource_group}/{name}", spec)

    def _drop(self, kind: str, name: str) -> bool:
        try:
            self._call("DELETE", f"keyvault/vault/{kind}/{name}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def drop_secret(self, name: str) -> bool:
        """Remove a secret completely; False if there was none."""
        return self._drop("secrets", name)

    def drop_certificate(self, name: str) -> bool:
        """Remove a certificate and its backing secret completely; False if there was none."""
        return self._drop("certificates", name)

    def drop_key(self, name: str) -> bool:
        """Remove a standalone key completely; False if there was none."""
        return self._drop("keys", name)


def start_emulator_process(
    state_dir: Path,
    *,
    marker: str,
    config: dict[str, Any] | None = None,
    port: int | None = None,
    timeout: float = 30,
) -> EmulatorAdmin:
    """Start ``python -m sandbox.azure`` in ``state_dir`` and wait until it listens.

    Started again on the folder of a stopped (or killed) emulator, with its ``port``, it serves
    the same URL with the same CA and restores the state saved there.

    Raises:
        RuntimeError: it exited or did not listen within ``timeout`` seconds (the log's tail
            says why).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "emulator.json").unlink(missing_ok=True)  # a killed emulator's stale address
    argv = [sys.executable, "-m", "sandbox.azure", "--state-dir", str(state_dir)]
    if port is not None:
        argv += ["--port", str(port)]
    if config is not None:
        config_file = state_dir / "config.json"
        config_file.write_text(json.dumps(config))
        config_file.chmod(0o600)  # it may hold cluster kubeconfigs
        argv += ["--config", str(config_file)]
    log = state_dir / "emulator.log"
    started = processes.spawn("azure-emulator", argv, log=log, marker=marker, cwd=state_dir)
    info_file = state_dir / "emulator.json"
    deadline = time.monotonic() + timeout
    while not info_file.exists():
        if time.monotonic() > deadline or not processes.is_running(started.pid, marker):
            processes.stop([(started.pid, marker)])
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"the Azure emulator did not start; log tail:\n{tail}")
        time.sleep(0.05)
    info = json.loads(info_file.read_text())
    return EmulatorAdmin(info["url"], Path(info["ca_bundle"]), pid=started.pid)
