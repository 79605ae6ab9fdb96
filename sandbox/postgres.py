"""A PostgreSQL for the sandbox's Prefect server: the sandbox's default database.

Why: on SQLite, Prefect's server answers concurrent flow-run state writes with "database is
locked" and its client backs off for seconds, so parallel sub-flows start seconds apart
(``docs/design.md``). So the sandbox uses PostgreSQL unless told ``--database sqlite``, as
production should.

Debian's ``postgresql`` package provides the binaries. The server runs as the ``postgres`` user
(it refuses root) with trust authentication on 127.0.0.1 only and ``fsync`` off (a sandbox). Its
folder (data, socket, log) is the one the caller chooses, normally inside the sandbox's state
folder; when the ``postgres`` user cannot reach that (a state folder under root's home), a new
temporary folder, which the caller records and later passes to :func:`restart` and
:func:`remove`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox import processes
from sandbox.processes import SandboxError

PG_ROOT = Path("/usr/lib/postgresql")
DATABASE = "prefect"
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL: its folder, port and PID."""

    directory: Path
    port: int
    pid: int

    @property
    def url(self) -> str:
        """The Prefect server's connection URL (see :func:`connection_url`)."""
        return connection_url(self.port)


def connection_url(port: int) -> str:
    """The Prefect server's URL for the ``prefect`` database of the server on ``port``."""
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"


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


def reachable(folder: Path) -> bool:
    """Whether the server's user can reach ``folder`` (an existing one), so data can live there.

    Always true unless running as root, when the server runs as ``postgres``: then every folder
    on the way must be searchable by others (or be postgres's own).
    """
    if os.geteuid() != 0:
        return True
    uid = pwd.getpwnam("postgres").pw_uid
    for path in (folder, *folder.parents):
        info = path.stat()
        if not (
            info.st_mode & stat.S_IXOTH or (info.st_uid == uid and info.st_mode & stat.S_IXUSR)
        ):
            return False
    return True


def command_line(directory: Path, port: int) -> list[str]:
    """The server's argv for ``directory``'s data on ``port``; for its first start and restarts."""
    return _as_postgres(
        [str(binaries() / "postgres"), "-D", str(directory / "data"), "-h", "127.0.0.1",
         "-p", str(port), "-k", str(directory), "-c", "fsync=off"]
    )  # fmt: skip


def _new_folder(directory: Path | None) -> Path:
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="meshflow-pg-"))
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    return directory


def _serve(directory: Path, port: int, marker: str) -> Postgres:
    """Start the server on ``directory``'s data; return once it accepts connections."""
    log = directory / "postgres.log"
    started = processes.spawn(
        "postgres", command_line(directory, port), log=log, marker=marker, cwd=directory
    )
    deadline = time.monotonic() + READY_TIMEOUT
    ready = [str(binaries() / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
             "-U", "postgres"]  # fmt: skip
    while subprocess.run(ready, check=False, capture_output=True).returncode != 0:
        if time.monotonic() > deadline or not processes.is_running(started.pid, marker):
            processes.stop([(started.pid, marker)])
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise SandboxError(f"PostgreSQL in {directory} did not start; log tail:\n{tail}")
        time.sleep(0.1)
    return Postgres(directory=directory, port=port, pid=started.pid)


def start(*, marker: str, port: int | None = None, directory: Path | None = None) -> Postgres:
    """Create a new database cluster, start it and create the ``prefect`` database.

    Args:
        marker: Marks the server's processes (see :mod:`sandbox.processes`).
        port: Port on 127.0.0.1; default a free one.
        directory: New or empty folder the ``postgres`` user can reach (see :func:`reachable`)
            for data, socket and log; default a new temporary folder.

    Raises:
        SandboxError: PostgreSQL is missing or did not start (nothing is left running).
    """
    folder = _new_folder(directory)
    try:
        _initdb(folder)
        pg = _serve(folder, port or processes.free_port(), marker)
        made = subprocess.run(
            _as_postgres([str(binaries() / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port),
                          "-U", "postgres", DATABASE]),
            capture_output=True, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            processes.stop([(pg.pid, marker)])
            raise SandboxError(f"creating the Prefect database failed: {made.stderr.decode()}")
    except BaseException:
        if directory is None:
            remove(folder)  # ours: nobody else knows it
        raise
    return pg


def _initdb(directory: Path) -> None:
    argv = [str(binaries() / "initdb"), "-D", str(directory / "data"), "-A", "trust"]
    done = subprocess.run(_as_postgres([*argv, "-U", "postgres"]), capture_output=True, check=False)
    if done.returncode != 0:
        raise SandboxError(f"initdb in {directory} failed: {done.stderr.decode()[-500:]}")


def restart(directory: Path, port: int, *, marker: str) -> Postgres:
    """Start the database cluster in ``directory`` again, on ``port``, with its data.

    Raises:
        SandboxError: the data folder is gone, the port is taken by another program, or the
            server did not start.
    """
    if not (directory / "data").is_dir():
        raise SandboxError(
            f"PostgreSQL's data folder {directory / 'data'} is gone (a temporary folder may be "
            "cleared at reboot), so the Prefect database cannot come back; run `meshflow "
            "sandbox up --reset` for a new sandbox"
        )
    processes.require_free_ports("postgres", [port])
    _remove_stale_locks(directory, port)
    return _serve(directory, port, marker)


def _remove_stale_locks(directory: Path, port: int) -> None:
    # A killed server leaves its lock files behind: data/postmaster.pid and the socket's. Either
    # is ignored unless the PID in it still exists, which a zombie does until reaped (not every
    # init reaps promptly), so PostgreSQL would refuse to start.
    for lock in (directory / "data" / "postmaster.pid", directory / f".s.PGSQL.{port}.lock"):
        try:
            owner = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            continue
        if processes.has_exited(owner):
            lock.unlink(missing_ok=True)


def remove(directory: Path) -> None:
    """Delete a stopped cluster's folder."""
    shutil.rmtree(directory, ignore_errors=True)
