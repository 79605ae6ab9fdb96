"""Run the emulator as a process.

Usage: ``python -m sandbox.azure --state-dir DIR [--port P] [--config FILE]``.

Once listening it writes ``DIR/emulator.json`` (``url``, ``ca_bundle``, ``pid``, ``tenant_id``)
atomically; on SIGTERM or SIGINT it stops serving, writes its state a last time, removes that
file and exits 0. Started again with the same ``--state-dir`` (and ``--port``, so the URL stays
the same), it reuses its CA and restores its state from ``DIR/vault-state.json`` (see
:mod:`sandbox.azure.persistence`); after SIGKILL, what changed in its last ~0.2 s is lost.

The optional JSON config may set ``tenant_id``, ``pending_polls``, ``lro_polls``,
``lro_retry_after_ms``, ``record_bodies`` (bool) and pre-register ``clients``
(``[{"client_id": ..., "secret": ...}]``), ``clusters`` (``subscription``, ``resourceGroup``,
``name`` plus the admin API's cluster fields) and ``vaults`` (``subscription``,
``resourceGroup``, ``name``, ``location``). The config is applied on every start, after the
saved state is restored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from .emulator import DEFAULT_TENANT, AzureEmulator

log = logging.getLogger("sandbox.azure")


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until SIGTERM/SIGINT, return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.azure", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    emulator = AzureEmulator(
        args.state_dir,
        args.host,
        args.port,
        tenant_id=config.get("tenant_id", DEFAULT_TENANT),
        pending_polls=int(config.get("pending_polls", 1)),
        lro_polls=int(config.get("lro_polls", 1)),
        lro_retry_after_ms=int(config.get("lro_retry_after_ms", 50)),
        record_bodies=bool(config.get("record_bodies", False)),
    )
    info_file = args.state_dir / "emulator.json"
    with emulator:
        emulator.apply_config(config)
        _write_atomic(
            info_file,
            {
                "url": emulator.url,
                "ca_bundle": str(emulator.ca_bundle.resolve()),
                "pid": os.getpid(),
                "tenant_id": emulator.tenant_id,
            },
        )
        while not stop.wait(0.5):
            pass
        log.info("stopping")
    info_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
