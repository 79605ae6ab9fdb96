"""Start and stop the sandbox's background processes, by PID, safely.

Every process the sandbox starts gets its own session and process group (so Ctrl-C in the user's
terminal does not reach it mid-write) and the environment variable ``MESHFLOW_SANDBOX_MARKER``
set to the sandbox's state folder; children (uvicorn workers, etc.) inherit it. Stopping checks
that a PID still carries the marker before signalling its group, so a recycled PID is never
killed by mistake, and leak checks can find every descendant.

A restart reuses the ports a process was first given (URLs saved elsewhere stay valid), so this
module also says who holds a port (:func:`require_free_ports`) and clears what a killed process
left behind (:func:`clear_after`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class SandboxError(RuntimeError):
    """The local sandbox could not be built, started or reached."""


@dataclass(frozen=True)
class Started:
    """A process the sandbox started."""

    name: str
    pid: int
    marker: str
    log: Path


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now and not yet returned by this process.

    Servers started in parallel pick their ports before any of them listens, and the kernel may
    offer a port twice in that window; a cluster whose etcd lost its port would then store its
    objects in another cluster's etcd. So a port is handed out once per process.
    """
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` of 127.0.0.1 right now.

    Binds with ``SO_REUSEADDR``, as the sandbox's servers do, so connections of a stopped server
    that linger in TIME_WAIT do not count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _socket_inodes(port: int) -> set[str]:
    # /proc/net/tcp{,6}: "sl local_address rem_address st ... inode"; TIME_WAIT has inode 0.
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def port_holders(port: int) -> list[int]:
    """PIDs of the processes with a socket on local ``port`` (those this user may inspect)."""
    targets = {f"socket:[{inode}]" for inode in _socket_inodes(port)}
    holders = set()
    for entry in Path("/proc").iterdir():
        if not (targets and entry.name.isdigit()):
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in targets for fd in (entry / "fd").iterdir()):
                holders.add(int(entry.name))
    return sorted(holders)


def describe(pid: int) -> str:
    """``pid 123 (its command line)``, shortened, for messages."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    command = " ".join(a.decode(errors="replace") for a in argv if a)
    return f"pid {pid} ({command[:77] + '...' if len(command) > 80 else command})"


def require_free_ports(owner: str, ports: Iterable[int]) -> None:
    """Check that ``owner`` (e.g. ``cluster-2 kube-apiserver``) can listen on each of ``ports``.

    Raises:
        SandboxError: a port is taken; the message names the process holding it and what to do.
    """
    for port in ports:
        if port_free(port):
            continue
        holders = ", ".join(describe(pid) for pid in port_holders(port))
        raise SandboxError(
            f"{owner} cannot listen on its port 127.0.0.1:{port}: it is taken by "
            f"{holders or 'a process this user cannot see'}. Stop that process and run "
            "`meshflow sandbox up` again, or run `meshflow sandbox up --reset` for a fresh "
            "sandbox on new ports (that deletes the sandbox's data, its Key Vault included)"
        )


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
    killed = [(pid, marker) for pid, marker in mine if is_running(pid, marker)]
    for pid, _ in killed:
        _signal_group(pid, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: on a loaded machine a killed process can still be
    # running when kill() returns. Wait for it, so that a stopped process is a gone one.
    deadline = time.monotonic() + grace
    while killed and time.monotonic() < deadline:
        for pid, _ in killed:
            _reap(pid)
        killed = [(pid, marker) for pid, marker in killed if is_running(pid, marker)]
        if killed:
            time.sleep(0.02)
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


def has_exited(pid: int) -> bool:
    """Whether process ``pid`` is gone, or a zombie none of whose threads still runs.

    Such a process holds no files or ports any more. (A PID reused by a live process does not
    count as exited.)
    """
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    states = []
    for thread in threads:
        with contextlib.suppress(OSError, IndexError):
            states.append((thread / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return all(state in ("Z", "X") for state in states)


def _exiting(pid: int) -> bool:
    # A dying process drops its memory (so its marker no longer reads) before its files, so for
    # a moment it is not "running" but still holds its ports; in a multi-threaded one (Go) the
    # leader can even be a zombie while other threads still close the files. A live process (a
    # reused PID, even another user's) has memory: VmSize in its status.
    try:
        if "VmSize:" in Path(f"/proc/{pid}/status").read_text():
            return False
    except OSError:
        return False  # gone
    return not has_exited(pid)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()


def _group_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def remnants(pid: int, marker: str) -> list[tuple[int, str]]:
    """``(pid, marker)`` of live processes left in the group that process ``pid`` leads or led.

    After a spawned process is killed, its children (workers, helpers) can outlive it and hold
    its port or files.
    """
    return [(p, m) for p, m in running_under(marker) if m == marker and _group_of(p) == pid]


def clear_after(pid: int, marker: str, *, timeout: float = 10.0) -> None:
    """Make way for a new start of process ``pid``, which stopped: free its ports and files.

    Waits (up to ``timeout`` seconds) until it has finished exiting, then stops the
    :func:`remnants` of its group.
    """
    deadline = time.monotonic() + timeout
    while _exiting(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    stop(remnants(pid, marker))


def running_marked() -> list[tuple[int, str]]:
    """Every live process started by any meshflow sandbox or test run (markers are paths)."""
    return running_under("")
