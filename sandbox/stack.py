"""The whole local sandbox: N control planes, the Azure emulator, a Prefect server, the blocks.

``up`` starts the sandbox and records everything in ``state.json`` in the state folder
(``$MESHFLOW_SANDBOX_DIR``, default ``~/.local/state/meshflow/sandbox``): each process's PID and
the ports and folders its command line is built from. Run again, ``up`` restarts in place what
stopped (same ports, data and credentials, so the URLs saved in the Prefect blocks stay valid and
the emulated Key Vault keeps the mesh CA); ``up --reset`` and ``down`` stop every process by PID
and remove the folder, so no key or token of the sandbox stays on disk. The flows then run
against the sandbox through the same code as against Azure: only the saved blocks differ
(endpoints and CA bundle point at the emulator).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from sandbox import kube, postgres, processes, worker
from sandbox.azure.admin import start_emulator_process
from sandbox.environment import (
    ENVIRONMENT,
    client_registration,
    cluster_registration,
    vault_registration,
)
from sandbox.kube import LocalCluster, SandboxError
from sandbox.prefect_server import start_prefect_server

#: Version of ``state.json``'s layout; 2 records the ports and folders restarts need.
STATE_VERSION = 2
DATABASES = ("postgres", "sqlite")
DEFAULT_DATABASE = "postgres"
DEFAULT_CLUSTERS = 2


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


@dataclass(frozen=True)
class EmulatorProcess:
    """A running emulator process: where it listens, its PID, the CA bundle clients trust."""

    url: str
    pid: int
    ca_bundle: str


@dataclass(frozen=True)
class UpResult:
    """What :meth:`Sandbox.up` did.

    Attributes:
        action: ``started`` (a new sandbox), ``restarted`` (some processes had stopped) or
            ``unchanged`` (everything was running).
        restarted: The processes started again, named for the user (``cluster-2
            kube-apiserver``, ``emulator``, ``prefect``, ``postgres``).
        state: The recorded state (as in ``state.json``).
    """

    action: Literal["started", "restarted", "unchanged"]
    state: dict[str, Any]
    restarted: tuple[str, ...] = field(default=())


# -- the Azure emulator's process ------------------------------------------------------------


def run_emulator(
    state_dir: Path, port: int, config: dict[str, Any], *, marker: str
) -> EmulatorProcess:
    """Start the emulator on ``port`` with its state in ``state_dir``; once it listens.

    The same arguments restart a stopped emulator in place: it reuses its CA and restores its
    vault from ``state_dir`` (see :mod:`sandbox.azure`), at the same URL.

    Raises:
        SandboxError: ``port`` is taken by another program, or it did not start.
    """
    processes.require_free_ports("emulator", [port])
    try:
        admin = start_emulator_process(state_dir, marker=marker, config=config, port=port)
    except RuntimeError as exc:
        raise SandboxError(str(exc)) from exc
    if admin.pid is None:  # it always sets it; the type allows an admin client without one
        raise SandboxError(f"the emulator in {state_dir} started without a PID")
    return EmulatorProcess(url=admin.url, pid=admin.pid, ca_bundle=str(admin.ca_bundle))


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

    def _write_state(self, state: Mapping[str, Any]) -> None:
        tmp = self.state_file.with_name("state.json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    # -- up ---------------------------------------------------------------------------------

    def up(
        self, count: int | None = None, *, database: str | None = None, reset: bool = False
    ) -> UpResult:
        """Start the sandbox with ``count`` clusters, or restart in place what of it stopped.

        With no sandbox recorded, starts a new one. With one recorded, starts again only the
        processes that stopped, with the same ports, data and credentials (etcd's objects, the
        emulated Key Vault, the Prefect database), and records their new PIDs; blocks and the
        mesh description are left as they are. A no-op if everything runs.

        Args:
            count: How many clusters. None: :data:`DEFAULT_CLUSTERS` for a new sandbox, as
                many as a recorded one has.
            database: The Prefect server's, ``postgres`` or ``sqlite`` (see
                :mod:`sandbox.postgres` for why PostgreSQL). None: ``postgres`` for a new
                sandbox, whatever a recorded one uses.
            reset: Stop and delete the recorded sandbox first (Key Vault included) and start a
                new one.

        Raises:
            SandboxError: The recorded sandbox has another number of clusters or another
                database; a recorded port is taken by another program; something failed to
                start (a new sandbox is then removed again, a restart leaves what runs).
            ValueError: ``count`` or ``database`` is out of range.
        """
        if count is not None:
            cluster_names(count)  # in range
        if database is not None and database not in DATABASES:
            raise ValueError(f"--database must be postgres or sqlite (got {database!r})")
        if reset:
            self.down()
        state = self.state()
        if state is None:
            names = cluster_names(count or DEFAULT_CLUSTERS)
            return UpResult("started", self._start(names, database or DEFAULT_DATABASE))
        self._check_matches(state, count, database)
        if not self.stopped():
            return UpResult("unchanged", state)
        return UpResult("restarted", state, tuple(self._restart(state)))

    def _check_matches(
        self, state: Mapping[str, Any], count: int | None, database: str | None
    ) -> None:
        recorded = len(state["clusters"])
        if count is not None and recorded != count:
            raise SandboxError(
                f"the sandbox in {self.root} has {recorded} clusters, not {count}; run "
                f"`meshflow sandbox up --reset --clusters {count}` for a new one (that deletes "
                "the sandbox's data, its Key Vault included), or `meshflow sandbox down` first"
            )
        own = state["prefect"].get("database")
        if database is not None and own is not None and database != own:
            raise SandboxError(
                f"the sandbox in {self.root} runs its Prefect server on {own}, not {database}; "
                f"run `meshflow sandbox up --reset --database {database}` for a new one (that "
                "deletes the sandbox's data), or leave out --database"
            )

    def _start(self, names: list[str], database: str) -> dict[str, Any]:
        """Start a new sandbox; on failure, stop and remove whatever did start."""
        self.root.mkdir(parents=True, exist_ok=True)
        pg: postgres.Postgres | None = None
        try:
            clusters = kube.start_clusters(names, self.root / "clusters")
            client_secret = secrets.token_urlsafe(24)
            emulator = self._start_emulator(clusters, client_secret)
            if database == "postgres" and not os.environ.get("PREFECT_API_URL"):
                pg = self._start_postgres()
            prefect = self._start_prefect(pg)
            state = {
                "version": STATE_VERSION,
                "environment": ENVIRONMENT,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "prefect": {"api_url": prefect.url, "pid": prefect.pid,
                            "database": database if prefect.pid else None,
                            "port": urlsplit(prefect.url).port if prefect.pid else None},
                "postgres": {"pid": pg.pid, "directory": str(pg.directory), "port": pg.port}
                if pg else None,
                "emulator": {"url": emulator.url, "pid": emulator.pid,
                             "ca_bundle": emulator.ca_bundle, "port": urlsplit(emulator.url).port,
                             "state_dir": str(self.root / "azure")},
                "clusters": [c.to_json() for c in clusters],
            }  # fmt: skip
            self._write_state(state)
            self._save_environment(state, client_secret)
            worker.register_deployments(self.root, prefect.url)
            state["worker"] = {"pid": self._start_worker(state)}
            self._write_state(state)
        except BaseException:
            self.down()
            if pg is not None:
                postgres.remove(pg.directory)  # outside the state folder if not recorded yet
            raise
        return state

    def _start_emulator(self, clusters: list[LocalCluster], client_secret: str) -> EmulatorProcess:
        config = {
            "clusters": [cluster_registration(c) for c in clusters],
            "clients": [client_registration(client_secret)],
            "vaults": [vault_registration()],
        }
        return run_emulator(self.root / "azure", processes.free_port(), config, marker=self.marker)

    def _start_postgres(self) -> postgres.Postgres:
        inside = self.root / "postgres"
        return postgres.start(
            marker=self.marker, directory=inside if postgres.reachable(self.root) else None
        )

    def _start_prefect(self, pg: postgres.Postgres | None) -> Endpoint:
        external = os.environ.get("PREFECT_API_URL")
        if external:
            return Endpoint(url=external.rstrip("/"), pid=None)
        server = start_prefect_server(
            self.root / "prefect", marker=self.marker, database_url=pg.url if pg else None
        )
        return Endpoint(url=server.api_url, pid=server.pid)

    def _start_worker(self, state: Mapping[str, Any]) -> int:
        return worker.start_worker(self.root, state["prefect"]["api_url"], marker=self.marker)

    def _save_environment(self, state: Mapping[str, Any], client_secret: str) -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from sandbox.environment import sandbox_spec, save_environment
        from sandbox.terraform import terraform_inputs_from_state

        terraform = terraform_inputs_from_state(self.root, state)
        spec = sandbox_spec([c["name"] for c in state["clusters"]], terraform=terraform)
        with temporary_settings(updates={PREFECT_API_URL: state["prefect"]["api_url"]}):
            save_environment(
                spec,
                emulator_url=state["emulator"]["url"],
                ca_bundle=state["emulator"]["ca_bundle"],
                client_secret=client_secret,
            )
        (self.root / "mesh.yaml").write_text(spec.to_yaml())

    # -- restart ----------------------------------------------------------------------------

    def _restart(self, state: dict[str, Any]) -> list[str]:
        """Restart what stopped, recording each new PID as it comes; the names restarted."""
        if state.get("version") != STATE_VERSION:
            raise SandboxError(
                f"the sandbox in {self.root} was started by an older meshflow that did not "
                "record the ports to restart it on; run `meshflow sandbox up --reset` for a new "
                "one (that deletes the sandbox's data), or `meshflow sandbox down` first"
            )
        restarted = self._restart_clusters(state)
        # PostgreSQL before the Prefect server that uses it.
        for name, restart in (
            ("postgres", self._restart_postgres),
            ("prefect", self._restart_prefect),
            ("emulator", self._restart_emulator),
            ("worker", self._start_worker),
        ):
            record = state.get(name) or {}
            pid = record.get("pid")
            if pid and not processes.is_running(pid, self.marker):
                processes.clear_after(pid, self.marker)
                record["pid"] = restart(state)
                self._write_state(state)
                restarted.append(name)
        return restarted

    def _restart_clusters(self, state: dict[str, Any]) -> list[str]:
        clusters = [LocalCluster.from_json(c) for c in state["clusters"]]
        try:
            return kube.restart_clusters(clusters)
        finally:  # record the clusters that did restart, also when another did not
            state["clusters"] = [kube.load_cluster(c.directory).to_json() for c in clusters]
            self._write_state(state)

    def _restart_postgres(self, state: Mapping[str, Any]) -> int:
        record = state["postgres"]
        directory, port = Path(record["directory"]), int(record["port"])
        return postgres.restart(directory, port, marker=self.marker).pid

    def _restart_prefect(self, state: Mapping[str, Any]) -> int:
        pg = state.get("postgres")
        database_url = postgres.connection_url(int(pg["port"])) if pg else None
        server = start_prefect_server(
            self.root / "prefect",
            marker=self.marker,
            port=int(state["prefect"]["port"]),
            database_url=database_url,
        )
        return server.pid

    def _restart_emulator(self, state: Mapping[str, Any]) -> int:
        record = state["emulator"]
        state_dir = Path(record["state_dir"])
        config = json.loads((state_dir / "config.json").read_text())  # as the first start wrote it
        emulator = run_emulator(state_dir, int(record["port"]), config, marker=self.marker)
        if emulator.url != record["url"]:
            processes.stop([(emulator.pid, self.marker)])
            raise SandboxError(
                f"the Azure emulator came back at {emulator.url}, not {record['url']} as the "
                "saved blocks say; run `meshflow sandbox up --reset`"
            )
        return emulator.pid

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
            for k in ("emulator", "prefect", "postgres", "worker")
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
            "stopped": self.stopped(),
            "state_dir": str(self.root),
            "environment": state["environment"],
            "prefect_api_url": state["prefect"]["api_url"],
            "prefect_ui_url": state["prefect"]["api_url"].removesuffix("/api"),
            "prefect_database": state["prefect"].get("database"),
            "emulator_url": state["emulator"]["url"],
            "emulator_ca_bundle": state["emulator"]["ca_bundle"],
            "mesh_spec": str(self.root / "mesh.yaml"),
            "work_pool": worker.POOL if state.get("worker") else None,
            "worker_running": bool(state.get("worker"))
            and processes.is_running(state["worker"]["pid"], self.marker),
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
