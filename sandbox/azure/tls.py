"""The emulator's own TLS material: its CA and a server certificate for 127.0.0.1.

The first start generates an ECDSA P-256 CA and server certificate in the state folder (via
:mod:`sandbox.certs`); later starts on the same folder reuse them, so clients that trust the
``ca.pem`` written at first start keep trusting a restarted emulator. They are generated afresh
only when missing, unreadable, not matching each other or about to expire. ``ca.pem`` is public
and is what clients pass as their CA bundle; the server key has mode 0600. These are the
emulator's infrastructure credentials, not product secrets.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from sandbox import certs

log = logging.getLogger(__name__)

_MIN_REMAINING = dt.timedelta(days=1)


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


def _paths(state_dir: Path) -> TlsFiles:
    return TlsFiles(state_dir / "ca.pem", state_dir / "server.pem", state_dir / "server-key.pem")


def reusable_problem(files: TlsFiles, hosts: tuple[str, ...], now: dt.datetime) -> str | None:
    """Why the TLS files cannot serve again (None when they can).

    They can when all three exist, the server certificate is issued by the CA, is for the
    key beside it, names every host and both stay valid for at least another day.
    """
    if not all(p.exists() for p in (files.ca_cert, files.server_cert, files.server_key)):
        return "not all TLS files exist"
    try:
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
        server.verify_directly_issued_by(ca)
        san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, OSError, InvalidSignature, x509.ExtensionNotFound) as exc:
        return f"the TLS files cannot be read or do not belong together: {exc!r}"
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*fmt) != server.public_key().public_bytes(*fmt):
        return "the server key does not match the server certificate"
    expiry = min(ca.not_valid_after_utc, server.not_valid_after_utc)
    if expiry - now < _MIN_REMAINING:
        return f"the TLS certificates expire at {expiry:%Y-%m-%d %H:%M} UTC"
    named = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    named |= set(san.get_values_for_type(x509.DNSName))
    if missing := {"127.0.0.1", *hosts} - named:
        return f"the server certificate does not name {sorted(missing)}"
    return None


def load_or_generate(
    state_dir: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> TlsFiles:
    """Reuse the CA and server certificate in ``state_dir``, or create them there.

    Args:
        state_dir: Folder holding ``ca.pem``, ``server.pem`` and ``server-key.pem``.
        hosts: DNS names the server certificate is valid for, besides 127.0.0.1 (the only
            address the emulator listens on).

    Returns:
        The paths, reused or just written.
    """
    files = _paths(state_dir)
    problem = reusable_problem(files, hosts, dt.datetime.now(dt.UTC))
    if problem is None:
        return files
    if files.ca_cert.exists():
        log.warning("new emulator CA in %s (%s): clients must trust it again", state_dir, problem)
    dns = tuple(h for h in hosts if not _is_ip(h))
    paths = certs.write_server_tls(state_dir, ca_name="meshflow azure emulator CA", dns_names=dns)
    return TlsFiles(paths.ca_cert, paths.cert, paths.key)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
