"""A local Prefect server (``prefect server start``) on SQLite, quiet and offline."""

from __future__ import annotations

import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sandbox import processes
from sandbox.kube import SandboxError

QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
DEFAULT_PORT = 4200


@dataclass(frozen=True)
class PrefectServer:
    """A running server: its API URL, PID and SQLite database."""

    api_url: str
    pid: int
    database: Path


def port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_healthy(api_url: str, timeout: float, log: Path) -> None:
    """Wait until ``GET {api_url}/health`` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise SandboxError(f"Prefect server {api_url} not healthy after {timeout:.0f}s:\n{tail}")


def start_prefect_server(
    home: Path, *, marker: str, port: int | None = None, database_url: str | None = None
) -> PrefectServer:
    """Start ``prefect server start`` with its home (and by default a SQLite database) in ``home``.

    Uses port 4200 (the UI's usual address) when free, else any free port. ``database_url``
    selects another database, e.g. ``postgresql+asyncpg://...``.
    """
    home.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = DEFAULT_PORT if port_free(DEFAULT_PORT) else processes.free_port()
    database = home / "prefect.db"
    env = {
        **QUIET_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url or f"sqlite+aiosqlite:///{database}",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    log = home / "server.log"
    started = processes.spawn(
        "prefect-server",
        [sys.executable, "-m", "prefect", "server", "start",
         "--host", "127.0.0.1", "--port", str(port)],
        log=log, marker=marker, cwd=home, env=env,
    )  # fmt: skip
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api_url, 120, log)
    except BaseException:
        processes.stop([(started.pid, marker)])
        raise
    return PrefectServer(api_url=api_url, pid=started.pid, database=database)
