"""The emulator's state file, ``<state_dir>/vault-state.json``: what survives a restart.

The file is the sandbox's stand-in for Key Vault's own storage (and ARM's, and Entra's): the
vault's secrets, certificates with their versions, keys and pending creations, the standalone
keys, soft-deleted objects, the ARM resources, the registered client applications and the
access tokens issued. So it holds private keys (base64 PKCS#8 DER), client secrets and bearer
tokens in clear: it is written with mode 0600 in a 0700 folder, and lives only in the sandbox's
state folder, which ``meshflow sandbox down`` removes with everything else.

Writing: every state-changing request marks the state dirty; a background thread writes at most
once per :data:`WRITE_INTERVAL` (and once more when the emulator stops), atomically (temporary
file, then ``os.replace``), so a process killed at any moment leaves the previous or the next
complete file, never a torn one, and loses at most the last ~0.2 s. The snapshot is taken under
the state lock but only copies (private keys and certificates are encoded once and cached);
JSON encoding and the write happen outside it, so requests never wait for the disk.

Format (``"format": 1``)::

    {"format": 1, "written_at": <unix seconds>,
     "secrets": {...}, "certificates": {...}, "keys": {...}, "arm": {...}, "identity": {...}}

each part being the matching store's ``snapshot()``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "vault-state.json"
FORMAT = 1
WRITE_INTERVAL = 0.2
"""Seconds between two writes at most; a change is on disk at most about this long after."""


class StateFileError(RuntimeError):
    """The state file exists but cannot be used."""


def json_copy(value: Any) -> Any:
    """A copy of JSON-shaped data (dicts and lists copied, leaves shared): cheap under a lock."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` if needed and make it 0700 (it holds the state file and TLS key)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (temporary file + ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when a stale temporary file had another mode
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)


class StateFile:
    """Debounced, atomic writes of the emulator's snapshot, and reading it back.

    Args:
        directory: The emulator's state folder.
        snapshot: Returns the JSON-ready state; called from the writer thread.
        interval: Seconds between two writes at most.
    """

    def __init__(
        self,
        directory: Path,
        snapshot: Callable[[], dict[str, Any]],
        *,
        interval: float = WRITE_INTERVAL,
    ) -> None:
        self.path = directory / STATE_FILE
        self._snapshot = snapshot
        self._interval = interval
        self._dirty = threading.Event()
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        """The saved state, or None when there is no state file.

        Raises:
            StateFileError: the file is not a state file this emulator can read; the message
                says how to start afresh.
        """
        if not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            raise self.unusable(exc) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise self.unusable(f"format {found!r}, expected {FORMAT}")
        return data

    def unusable(self, reason: object) -> StateFileError:
        """The error for a state file that cannot be restored, with what to do about it."""
        return StateFileError(
            f"cannot restore the emulator's state from {self.path}: {reason}. Remove that file "
            "to start with an empty vault (its secrets, certificates and keys are then lost), "
            "or run `meshflow sandbox down` to start the whole sandbox afresh."
        )

    def start(self) -> None:
        """Start the background writer."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="azure-emulator-state", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        """Note that the state changed: it is written within about ``interval`` seconds."""
        self._dirty.set()

    def stop(self) -> None:
        """Stop the writer and write the state a last time."""
        self._stopping.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.write()

    def write(self) -> None:
        """Write the current state now (atomically, mode 0600)."""
        with self._write_lock:
            data = {"format": FORMAT, "written_at": int(time.time()), **self._snapshot()}
            write_private(self.path, json.dumps(data, separators=(",", ":")).encode())

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            if self._stopping.is_set():
                return
            self._dirty.clear()
            try:
                self.write()
            except Exception:  # a full disk must not stop the emulator; the next write retries
                log.exception("could not write %s", self.path)
                self._dirty.set()
            if self._stopping.wait(self._interval):
                return
