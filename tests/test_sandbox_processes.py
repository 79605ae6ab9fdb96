"""Ports and leftovers that decide whether a sandbox process can be started again in place."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import processes
from sandbox.processes import SandboxError


@pytest.fixture
def listener() -> Iterator[int]:
    """A port this test process listens on, like another program holding a recorded port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_taken_port_is_refused_naming_its_holder_and_what_to_do(listener: int) -> None:
    assert not processes.port_free(listener)
    assert processes.port_holders(listener) == [os.getpid()]
    with pytest.raises(SandboxError) as err:
        processes.require_free_ports("cluster-2 kube-apiserver", [listener])
    message = str(err.value)
    assert f"cluster-2 kube-apiserver cannot listen on its port 127.0.0.1:{listener}" in message
    assert f"pid {os.getpid()} (" in message
    assert "meshflow sandbox up --reset" in message


def test_a_free_port_passes() -> None:
    port = processes.free_port()
    assert processes.port_free(port)
    processes.require_free_ports("emulator", [port])


def test_servers_started_together_never_get_the_same_port() -> None:
    # Picked from many threads before any server listens, as parallel clusters do.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        ports = list(pool.map(lambda _: processes.free_port(), range(400)))
    assert len(set(ports)) == len(ports)


def test_a_closed_connection_in_time_wait_does_not_hold_the_port() -> None:
    # A killed server's accepted connections can linger in TIME_WAIT; servers bind with
    # SO_REUSEADDR, so such a port is free for the restart.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: it goes to TIME_WAIT
        client.close()
    assert processes.port_free(port)


@pytest.mark.kube
def test_children_of_a_killed_process_are_found_and_stopped(tmp_path: Path) -> None:
    marker = str(tmp_path)
    sleep = "import time; time.sleep(60)"
    child_code = (
        f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {sleep!r}]); {sleep}"
    )
    parent = processes.spawn(
        "parent", [sys.executable, "-c", child_code], log=tmp_path / "p.log", marker=marker,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        for _ in range(1000):  # until the child has started
            if len(processes.running_under(marker)) == 2:
                break
            time.sleep(0.01)
        os.kill(parent.pid, signal.SIGKILL)
        while not processes.has_exited(parent.pid):
            time.sleep(0.01)
        (child,) = processes.remnants(parent.pid, marker)  # the child outlived it
        assert child[0] != parent.pid

        processes.clear_after(parent.pid, marker)

        assert processes.running_under(marker) == []
    finally:
        processes.stop(processes.running_under(marker))


@pytest.mark.kube
def test_a_zombie_has_exited_but_a_live_process_has_not(tmp_path: Path) -> None:
    # The zombie's parent is a helper that never waits (this test process may reap its own).
    marker = str(tmp_path)
    code = "import subprocess, time; print(subprocess.Popen(['sleep', '60']).pid, flush=True); " \
        "time.sleep(60)"  # fmt: skip
    log = tmp_path / "helper.log"
    processes.spawn("helper", [sys.executable, "-c", code], log=log, marker=marker, cwd=tmp_path)
    try:
        for _ in range(1000):
            if log.read_text().strip():
                break
            time.sleep(0.01)
        child = int(log.read_text())
        assert not processes.has_exited(child)
        os.kill(child, signal.SIGKILL)
        for _ in range(1000):
            if processes.has_exited(child):
                break
            time.sleep(0.01)
        assert Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        assert processes.has_exited(child)
    finally:
        processes.stop(processes.running_under(marker))
