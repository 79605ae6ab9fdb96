"""The process's caches and pools: one reset empties them, and credentials' files are closed."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from blocks.runtime import Memo, Runtime
from meshflow.errors import InvalidError
from meshflow.kubeconfig import ClusterAccess
from tasks.kube_client import KubeClient

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _access(**kw: object) -> ClusterAccess:
    base: dict[str, object] = dict(context="c1", server="https://127.0.0.1:1", ca_pem=CA,
                                   auth="token", token="t0k3n")  # fmt: skip
    return ClusterAccess(**(base | kw))  # type: ignore[arg-type]


def _open_memfds() -> set[str]:
    fds = Path("/proc/self/fd")
    found = set()
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/memfd:meshflow-"):
            found.add(fd.name)
    return found


def test_a_client_owns_its_credential_files_and_closes_them() -> None:
    before = _open_memfds()
    cert = KubeClient(_access(auth="client-cert", token=None, client_cert_pem=b"c",
                              client_key_pem=b"k"))  # fmt: skip
    assert len(_open_memfds() - before) == 3  # CA, certificate and key: in memory, not on disk
    cert.close()
    assert _open_memfds() == before
    with pytest.raises(InvalidError, match="no usable credential"):
        KubeClient(_access(token=None))
    assert _open_memfds() == before  # a refused credential leaves nothing open either


def test_a_memo_makes_once_reuses_and_closes_what_it_replaces() -> None:
    closed: list[str] = []
    memo: Memo[str] = Memo("t", close=closed.append)
    made: list[int] = []

    def make() -> str:
        made.append(1)
        return f"v{len(made)}"

    barrier = threading.Barrier(8)

    def get() -> None:
        barrier.wait()
        memo.get("k", make)

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == [1]  # concurrent first calls made it once
    assert memo.get("k", make, valid=lambda v: v == "v1") == "v1"
    assert memo.get("k", make, valid=lambda v: False) == "v2"  # no longer valid: made again
    assert closed == ["v1"]  # and the replaced one closed
    memo.forget()
    assert closed == ["v1", "v2"]
    assert memo.peek("k") is None


def test_reset_forgets_every_memo_and_renews_the_pools() -> None:
    runtime = Runtime()
    closed: list[object] = []
    runtime.memo("a", close=closed.append).get("x", lambda: "value")
    pool = runtime.pool("io", 2)
    assert runtime.pool("io", 2) is pool
    runtime.reset()
    assert closed == ["value"]
    assert runtime.pool("io", 2) is not pool
    assert runtime.memo("a").peek("x") is None
