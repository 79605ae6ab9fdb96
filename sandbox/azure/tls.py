"""The emulator's own TLS material: a throw-away CA and a server certificate for 127.0.0.1.

A fresh ECDSA P-256 CA is generated on every start (instant, and no stale trust survives a
restart). ``ca.pem`` is public and is what clients pass as their CA bundle; the server key is
written with mode 0600. These are the emulator's infrastructure credentials, not product secrets.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from sandbox import certs


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and of the server certificate chain and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        """Return a TLS 1.2+ server context loaded with the server certificate chain."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.server_cert, self.server_key)
        return ctx


def generate(state_dir: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """Create a CA and a server certificate inside ``state_dir`` (via :mod:`sandbox.certs`).

    Args:
        state_dir: Folder to write ``ca.pem``, ``server.pem`` and ``server-key.pem`` into.
        hosts: DNS names the server certificate is valid for, besides 127.0.0.1 (the only
            address the emulator listens on).

    Returns:
        The paths written.
    """
    dns = tuple(h for h in hosts if not _is_ip(h))
    paths = certs.write_server_tls(state_dir, ca_name="meshflow azure emulator CA", dns_names=dns)
    return TlsFiles(paths.ca_cert, paths.cert, paths.key)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
