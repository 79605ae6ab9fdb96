"""A throwaway PostgreSQL for the sandbox's Prefect server (``--database postgres``).

Why: Prefect's server opens SQLite transactions as ``DEFERRED``, so when flow runs change state
while its own event and task-run recorders write, SQLite answers "database is locked" at once,
the API returns 503 and the client sleeps 2, 4, 8 … seconds. Measured here: four gathered
sub-flows started up to 6 s apart on SQLite and within 0.1 s on PostgreSQL (see
``benchmarks/install_parallel.py``). SQLite stays the default; PostgreSQL is what to use for
more than a couple of clusters, in the sandbox as in production.

Debian's ``postgresql`` package provides the binaries. The server runs as the ``postgres`` user
(it refuses root) with trust authentication on 127.0.0.1 only, ``fsync`` off (a sandbox), and
its data in a temporary folder that :func:`remove` deletes.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox import processes
from sandbox.kube import SandboxError

PG_ROOT = Path("/usr/lib/postgresql")
DATABASE = "prefect"


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL: its data folder, PID and the Prefect connection URL."""

    directory: Path
    pid: int
    url: str


def binaries() -> Path:
    """The newest installed PostgreSQL ``bin`` folder."""
    versions = sorted(PG_ROOT.glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise SandboxError("PostgreSQL is not installed: apt-get install -y postgresql")
    return versions[-1].parent


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    # setpriv execs in place, so the PID we record is postgres itself.
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]


def start(*, marker: str, port: int | None = None) -> Postgres:
    """Create a cluster in a new temporary folder, start it, create the ``prefect`` database."""
    bin_dir = binaries()
    port = port or processes.free_port()
    directory = Path(tempfile.mkdtemp(prefix="meshflow-pg-"))
    directory.chmod(0o755)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    data = directory / "data"
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True, capture_output=True,
    )  # fmt: skip
    started = processes.spawn(
        "postgres",
        _as_postgres([str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                      "-p", str(port), "-k", str(directory), "-c", "fsync=off"]),
        log=Path(tempfile.gettempdir()) / f"{directory.name}.log", marker=marker, cwd=directory,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        made = subprocess.run(
            _as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                          "-U", "postgres", DATABASE]),
            capture_output=True, check=False,
        )  # fmt: skip
        if made.returncode == 0:
            break
        if time.monotonic() > deadline:
            processes.stop([(started.pid, marker)])
            raise SandboxError(f"PostgreSQL did not start: {made.stderr.decode()[-500:]}")
        time.sleep(0.2)
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"
    return Postgres(directory=directory, pid=started.pid, url=url)


def remove(directory: Path) -> None:
    """Delete a stopped cluster's folder."""
    shutil.rmtree(directory, ignore_errors=True)
    Path(tempfile.gettempdir(), f"{directory.name}.log").unlink(missing_ok=True)
