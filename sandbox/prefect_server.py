"""A local Prefect server (``prefect server start``), quiet and offline.

Its database is SQLite in its home folder unless a URL is given (the sandbox gives PostgreSQL's,
see :mod:`sandbox.postgres`). Starting it again with the same home, port and database URL is a
restart: same API URL, same data.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sandbox import processes
from sandbox.processes import SandboxError

QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
DEFAULT_PORT = 4200
HEALTHY_TIMEOUT = 120.0


@dataclass(frozen=True)
class PrefectServer:
    """A running server: its API URL, PID, port and SQLite database (used unless a URL is set)."""

    api_url: str
    pid: int
    database: Path
    port: int


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


def command_line(port: int) -> list[str]:
    """The server's argv on ``port`` of 127.0.0.1."""
    return [sys.executable, "-m", "prefect", "server", "start",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def environment(home: Path, port: int, database_url: str | None) -> dict[str, str]:
    """The server's environment: its home, port, database (default SQLite in ``home``)."""
    return {
        **QUIET_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url
        or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }


def start_prefect_server(
    home: Path, *, marker: str, port: int | None = None, database_url: str | None = None
) -> PrefectServer:
    """Start ``prefect server start`` with its home in ``home``; return once it is healthy.

    Args:
        home: Its ``PREFECT_HOME`` (and the SQLite database's folder). An existing home is
            reused, so the same ``home``, ``port`` and ``database_url`` restart a server.
        marker: Marks its processes (see :mod:`sandbox.processes`).
        port: Port on 127.0.0.1; default 4200 (the UI's usual address) when free, else any.
        database_url: Another database, e.g. ``postgresql+asyncpg://...``.

    Raises:
        SandboxError: ``port`` is taken, or the server did not become healthy (it is stopped).
    """
    home.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = DEFAULT_PORT if processes.port_free(DEFAULT_PORT) else processes.free_port()
    else:
        processes.require_free_ports("prefect", [port])
    log = home / "server.log"
    started = processes.spawn(
        "prefect-server", command_line(port), log=log, marker=marker, cwd=home,
        env=environment(home, port, database_url),
    )  # fmt: skip
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_healthy(api_url, HEALTHY_TIMEOUT, log)
    except BaseException:
        processes.stop([(started.pid, marker)])
        raise
    return PrefectServer(api_url=api_url, pid=started.pid, database=home / "prefect.db", port=port)
