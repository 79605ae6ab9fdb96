"""The process's shared state in one place, emptied by one :func:`reset`.

Memos of loaded blocks, SDK clients and cluster credentials, and the thread pools that blocking
calls run on.

A flow run names the same few blocks, clusters and vaults many times; reading a block costs an
API call, building an SDK client a TLS context, fetching cluster credentials an ARM call. So
they are kept per process, in :class:`Memo` objects registered here, each with its lifetime
and, for things that hold resources (API clients and their in-memory credential files), a
``close`` called when an entry is replaced or forgotten. Thread pools are made on first use.

``reset()`` is for tests and for after a rotation: everything is read, built and fetched anew.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    """A thread-safe memo: ``get(key, make)`` makes a value once (per ``ttl``), then reuses it.

    Concurrent first calls for one key make it once. A value replaced (its ``ttl`` passed, or
    ``fresh=True``) or forgotten is handed to ``close``.
    """

    def __init__(
        self, name: str, *, ttl: float | None = None, close: Callable[[V], None] | None = None
    ) -> None:
        self.name = name
        self.ttl = ttl
        self._close = close
        self._values: dict[Hashable, tuple[float, V]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(
        self,
        key: Hashable,
        make: Callable[[], V],
        *,
        fresh: bool = False,
        valid: Callable[[V], bool] | None = None,
    ) -> V:
        """The value for ``key``: the one made before if it is still good, else ``make()``.

        Still good: not ``fresh`` asked for, its ``ttl`` not passed, and ``valid(value)``.
        """
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._values.get(key)
            good = hit is not None and not fresh and not self._expired(hit[0])
            if hit is not None and good and (valid is None or valid(hit[1])):
                return hit[1]
            value = make()
            self._values[key] = (time.monotonic(), value)
        if hit is not None and self._close is not None:
            self._close(hit[1])
        return value

    def peek(self, key: Hashable) -> V | None:
        """The value for ``key`` if one is held and still good, without making one."""
        hit = self._values.get(key)
        return hit[1] if hit is not None and not self._expired(hit[0]) else None

    def forget(self) -> None:
        """Drop (and close) every value."""
        with self._guard:
            values, self._values = self._values, {}
        if self._close is not None:
            for _, value in values.values():
                self._close(value)

    def _expired(self, made: float) -> bool:
        return self.ttl is not None and time.monotonic() - made >= self.ttl


class Runtime:
    """The process's memos and pools."""

    def __init__(self) -> None:
        self._memos: dict[str, Memo[object]] = {}
        self._pools: dict[str, tuple[int, ThreadPoolExecutor]] = {}
        self._lock = threading.Lock()

    def memo(
        self, name: str, *, ttl: float | None = None, close: Callable[[V], None] | None = None
    ) -> Memo[V]:
        """The memo called ``name``, registered on first use with its ``ttl`` and ``close``."""
        with self._lock:
            if name not in self._memos:
                self._memos[name] = Memo(name, ttl=ttl, close=close)  # type: ignore[arg-type]
            return self._memos[name]  # type: ignore[return-value]

    def pool(self, name: str, workers: int) -> ThreadPoolExecutor:
        """The thread pool called ``name`` (``workers`` threads), made on first use."""
        with self._lock:
            if name not in self._pools:
                executor = ThreadPoolExecutor(workers, thread_name_prefix=f"meshflow-{name}")
                self._pools[name] = (workers, executor)
            return self._pools[name][1]

    def reset(self) -> None:
        """Forget every memo's values (closing what they hold); pools are made again on use."""
        with self._lock:
            memos = list(self._memos.values())
            pools, self._pools = list(self._pools.values()), {}
        for memo in memos:
            memo.forget()
        for _, executor in pools:
            executor.shutdown(wait=False)


RUNTIME = Runtime()
"""The one runtime of this process."""


def reset() -> None:
    """Read every block, rebuild every client and fetch every credential anew (tests, rotation)."""
    RUNTIME.reset()
