"""Start and stop the sandbox's background processes, by PID, safely.

Every process the sandbox starts gets its own session and process group (so Ctrl-C in the user's
terminal does not reach it mid-write) and the environment variable ``MESHFLOW_SANDBOX_MARKER``
set to the sandbox's state folder; children (uvicorn workers, etc.) inherit it. Stopping checks
that a PID still carries the marker before signalling its group, so a recycled PID is never
killed by mistake, and leak checks can find every descendant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Started:
    """A process the sandbox started."""

    name: str
    pid: int
    marker: str
    log: Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


MARKER_VAR = "MESHFLOW_SANDBOX_MARKER"


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    marker: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> Started:
    """Start ``argv`` detached from the terminal, output appended to ``log``.

    ``marker`` (typically the state folder) is put in the child's environment so :func:`stop`
    and :func:`running_under` can recognise it and its descendants later.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {}), MARKER_VAR: marker}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env,
            start_new_session=True,
        )
    _await_marker(proc, marker)
    return Started(name=name, pid=proc.pid, marker=marker, log=log)


def _await_marker(proc: subprocess.Popen[bytes], marker: str, timeout: float = 5.0) -> None:
    # Right after exec, /proc/<pid>/environ can still read empty (measured: 1 spawn in 5), and
    # a check then would take a starting process for a dead one and never stop it. Wait until
    # the marker shows, or the process has exited.
    deadline = time.monotonic() + timeout
    while _marker_of(proc.pid) != marker and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()  # unmarked, it could not be found and stopped later
            proc.wait()
            raise OSError(f"process {proc.pid} ({proc.args!r}) shows no {MARKER_VAR} after exec")
        time.sleep(0.001)


def _marker_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None  # gone, or not ours to read
    prefix = f"{MARKER_VAR}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def is_running(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive and is still a process we started (it carries ``marker``)."""
    return _marker_of(pid) == marker


def _reap(pid: int) -> None:
    # Processes started by this interpreter become zombies until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each spawned process leads its own group: signal the group so its children go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop(procs: Iterable[tuple[int, str]], *, grace: float = 5.0) -> list[int]:
    """Stop processes given as ``(pid, marker)``: SIGTERM, then SIGKILL after ``grace`` seconds.

    Returns the PIDs that were signalled. Processes already gone, or whose PID now belongs to
    another program, are skipped.
    """
    mine = [(pid, marker) for pid, marker in procs if is_running(pid, marker)]
    for pid, _ in mine:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for pid, _ in mine:
            _reap(pid)
        if not any(is_running(pid, marker) for pid, marker in mine):
            break
        time.sleep(0.05)
    for pid, marker in mine:
        if is_running(pid, marker):
            _signal_group(pid, signal.SIGKILL)
            _reap(pid)
    return [pid for pid, _ in mine]


def running_under(folder: str) -> list[tuple[int, str]]:
    """``(pid, marker)`` of every live process whose marker is ``folder`` or a path below it.

    Descendants inherit the marker, so this finds them too (leak checks, stray clean-up).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            marker = _marker_of(int(entry.name))
            if marker is not None and (marker == folder or marker.startswith(folder + "/")):
                found.append((int(entry.name), marker))
    return found


def running_marked() -> list[tuple[int, str]]:
    """Every live process started by any meshflow sandbox or test run (markers are paths)."""
    return running_under("")
