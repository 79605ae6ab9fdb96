"""The whole local sandbox: N control planes, the Azure emulator, a Prefect server, the blocks.

``up`` starts what is not running yet and records everything in ``state.json`` in the state
folder (``$MESHFLOW_SANDBOX_DIR``, default ``~/.local/state/meshflow/sandbox``); ``down`` stops
every process by PID and removes the folder, so no key or token of the sandbox stays on disk.
The flows then run against the sandbox through the same code as against Azure: only the saved
blocks differ (endpoints and CA bundle point at the emulator).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox import kube, postgres, processes
from sandbox.azure.admin import start_emulator_process
from sandbox.environment import ENVIRONMENT, cluster_registration
from sandbox.kube import LocalCluster, SandboxError
from sandbox.prefect_server import start_prefect_server


def default_root() -> Path:
    """The sandbox's state folder."""
    default = Path.home() / ".local" / "state" / "meshflow" / "sandbox"
    return Path(os.environ.get("MESHFLOW_SANDBOX_DIR", default))


def cluster_names(count: int) -> list[str]:
    """``cluster-1`` … ``cluster-N``."""
    if not 1 <= count <= 16:
        raise ValueError(f"--clusters must be between 1 and 16 (got {count})")
    return [f"cluster-{i}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class Endpoint:
    """A service the sandbox started (or found already running)."""

    url: str
    pid: int | None
    ca_bundle: str | None = None


class Sandbox:
    """The sandbox rooted at one state folder."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).resolve()

    @property
    def marker(self) -> str:
        """Identifies every process this sandbox started (see :mod:`sandbox.processes`)."""
        return str(self.root)

    @property
    def state_file(self) -> Path:
        """Where :meth:`up` records what it started."""
        return self.root / "state.json"

    def state(self) -> dict[str, Any] | None:
        """The recorded state, or None when the sandbox is not up."""
        if not self.state_file.exists():
            return None
        return dict(json.loads(self.state_file.read_text()))

    # -- up ---------------------------------------------------------------------------------

    def _start_emulator(self, clusters: list[LocalCluster]) -> Endpoint:
        config = {"clusters": [cluster_registration(c) for c in clusters]}
        admin = start_emulator_process(self.root / "azure", marker=self.marker, config=config)
        return Endpoint(url=admin.url, pid=admin.pid, ca_bundle=str(admin.ca_bundle))

    def _start_prefect(self, database: str) -> tuple[Endpoint, dict[str, Any] | None]:
        external = os.environ.get("PREFECT_API_URL")
        if external:
            return Endpoint(url=external.rstrip("/"), pid=None), None
        pg = postgres.start(marker=self.marker) if database == "postgres" else None
        server = start_prefect_server(
            self.root / "prefect", marker=self.marker, database_url=pg.url if pg else None
        )
        recorded = {"pid": pg.pid, "directory": str(pg.directory)} if pg else None
        return Endpoint(url=server.api_url, pid=server.pid), recorded

    def up(self, count: int = 2, *, database: str = "sqlite") -> dict[str, Any]:
        """Start the sandbox with ``count`` clusters; a no-op if it already runs that many.

        ``database`` is the Prefect server's: ``sqlite`` (default) or ``postgres`` (see
        :mod:`sandbox.postgres` for when it matters).

        Raises:
            SandboxError: it runs with another number of clusters, or something failed to start
                (whatever did start is stopped again).
        """
        names = cluster_names(count)
        if database not in ("sqlite", "postgres"):
            raise ValueError(f"--database must be sqlite or postgres (got {database!r})")
        state = self.state()
        if state is not None:
            if self.is_healthy() and len(state["clusters"]) == count:
                return state
            if self.is_healthy():
                raise SandboxError(
                    f"the sandbox already runs {len(state['clusters'])} clusters; "
                    "run `meshflow sandbox down` first to change the count"
                )
            self.down()  # half-dead from an earlier crash: start clean
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            clusters = kube.start_clusters(names, self.root / "clusters")
            emulator = self._start_emulator(clusters)
            prefect, pg = self._start_prefect(database)
            state = {
                "environment": ENVIRONMENT,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "prefect": {"api_url": prefect.url, "pid": prefect.pid, "database": database},
                "postgres": pg,
                "emulator": {"url": emulator.url, "pid": emulator.pid,
                             "ca_bundle": emulator.ca_bundle},
                "clusters": [c.to_json() for c in clusters],
            }  # fmt: skip
            self.state_file.write_text(json.dumps(state, indent=2))
            self._save_environment(state)
        except BaseException:
            self.down()
            raise
        return state

    def _save_environment(self, state: Mapping[str, Any]) -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from sandbox.environment import sandbox_spec, save_environment

        spec = sandbox_spec([c["name"] for c in state["clusters"]])
        with temporary_settings(updates={PREFECT_API_URL: state["prefect"]["api_url"]}):
            save_environment(
                spec,
                emulator_url=state["emulator"]["url"],
                ca_bundle=state["emulator"]["ca_bundle"],
                client_secret=secrets.token_urlsafe(24),
            )
        (self.root / "mesh.yaml").write_text(spec.to_yaml())

    # -- status and down --------------------------------------------------------------------

    def _recorded(self) -> list[tuple[str, int, str]]:
        """``(name for the user, pid, marker)`` of every process :meth:`up` recorded."""
        state = self.state() or {}
        recorded = [
            (f"{c['name']} {proc}", pid, c["directory"])
            for c in state.get("clusters", [])
            for proc, pid in zip(kube.PROCESSES, c["pids"], strict=False)
        ]
        recorded += [
            (k, state[k]["pid"], self.marker)
            for k in ("emulator", "prefect", "postgres")
            if (state.get(k) or {}).get("pid")
        ]
        return recorded

    def is_healthy(self) -> bool:
        """Whether every recorded process is still running."""
        recorded = self._recorded()
        return bool(recorded) and all(processes.is_running(p, m) for _, p, m in recorded)

    def stopped(self) -> list[str]:
        """The recorded processes that are no longer running, named for the user."""
        return [
            f"{name} (pid {pid})"
            for name, pid, marker in self._recorded()
            if not processes.is_running(pid, marker)
        ]

    def status(self) -> dict[str, Any]:
        """A JSON-ready description: what runs where (no secrets)."""
        state = self.state()
        if state is None:
            return {"running": False, "state_dir": str(self.root)}
        return {
            "running": self.is_healthy(),
            "state_dir": str(self.root),
            "environment": state["environment"],
            "prefect_api_url": state["prefect"]["api_url"],
            "prefect_ui_url": state["prefect"]["api_url"].removesuffix("/api"),
            "emulator_url": state["emulator"]["url"],
            "emulator_ca_bundle": state["emulator"]["ca_bundle"],
            "mesh_spec": str(self.root / "mesh.yaml"),
            "clusters": [
                {
                    "name": c["name"],
                    "api_server": c["api_url"],
                    "ca_bundle": c["ca_bundle"],
                    "admin_kubeconfig": c["admin_kubeconfig"],
                    "running": all(processes.is_running(p, c["directory"]) for p in c["pids"]),
                }
                for c in state["clusters"]
            ],
        }

    def down(self) -> list[int]:
        """Stop every process the sandbox started and remove its state folder.

        Also stops strays that carry this sandbox's marker but were never recorded (e.g. a
        crash between starting a process and writing the state). Returns the PIDs stopped.
        """
        pg_dir = ((self.state() or {}).get("postgres") or {}).get("directory")
        stopped = processes.stop([(pid, marker) for _, pid, marker in self._recorded()])
        stopped += processes.stop(processes.running_under(self.marker))
        if pg_dir:
            postgres.remove(Path(pg_dir))
        shutil.rmtree(self.root, ignore_errors=True)
        return stopped
