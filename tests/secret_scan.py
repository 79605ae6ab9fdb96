"""Decode everything a Prefect home holds and look for secrets in it (shared by the tests).

Prefect stores rows in its database and results (and failed runs' exceptions) as files: JSON,
base64, sometimes cloudpickle. Plain ``grep`` misses what those encodings hide, so each file is
decoded layer by layer (SQLite cells, base64 runs, pickles rendered to text) and every layer is
searched for the exact secret values given and for any private key.
"""

from __future__ import annotations

import base64
import binascii
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle

PKCS12_OID = bytes.fromhex("2a864886f70d010c")  # 1.2.840.113549.1.12: PKCS#12 bag types


def scan(home: Path, secrets: set[str]) -> list[str]:
    """What in ``home`` holds one of ``secrets`` or a private key, once decoded: one line each."""
    needles = {s.encode() for s in secrets}
    found = []
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        hits = set()
        for layer in _layers_of_file(path):
            if any(n in layer for n in needles):
                hits.add("a secret value")
            if b"PRIVATE KEY" in layer or PKCS12_OID in layer:
                hits.add("a private key")
        found += [f"{path}: {hit}" for hit in sorted(hits)]
    return found


def _layers_of_file(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data.startswith(b"SQLite format 3"):
        yield from _sqlite_cells(path)
    yield from _layers(data)


def _sqlite_cells(path: Path) -> Iterator[bytes]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - our own test DB
                for cell in row:
                    if isinstance(cell, str | bytes):
                        yield from _layers(cell.encode() if isinstance(cell, str) else cell)
    finally:
        db.close()


_B64 = re.compile(rb"[A-Za-z0-9+/_-]{24,}={0,2}")


def _layers(data: bytes, depth: int = 0) -> Iterator[bytes]:
    """``data``, and what base64 runs, JSON strings and pickles inside it decode to."""
    yield data
    if depth >= 3:
        return
    if data[:1] == b"\x80":
        yield from _unpickled(data, depth)
    for run in _B64.findall(data):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                inner = decode(run + b"=" * (-len(run) % 4))
            except (binascii.Error, ValueError):
                continue
            yield from _layers(inner, depth + 1)


def _unpickled(data: bytes, depth: int) -> Iterator[bytes]:
    try:
        obj = cloudpickle.loads(data)
    except Exception:
        return
    yield from _layers(_render(obj).encode(), depth + 1)


def _render(obj: Any, seen: set[int] | None = None) -> str:
    """Everything an unpickled object holds, as text (args, attributes, containers)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return ""
    seen.add(id(obj))
    parts = [repr(obj)]
    if isinstance(obj, BaseException):
        parts += [_render(a, seen) for a in obj.args]
    if isinstance(obj, dict):
        parts += [_render(k, seen) + _render(v, seen) for k, v in obj.items()]
    elif isinstance(obj, list | tuple | set):
        parts += [_render(v, seen) for v in obj]
    for value in getattr(obj, "__dict__", {}).values():
        parts.append(_render(value, seen))
    return "\n".join(parts)
