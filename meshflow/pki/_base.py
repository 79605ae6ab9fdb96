"""Shared types and small helpers for :mod:`meshflow.pki`.

Nothing here touches files, the network or the clock: callers pass ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

# The key types we can both sign certificates with and put in a PKCS#12 file.
# A deliberate subset of cryptography's unions: DSA is obsolete, and ML-DSA keys
# cannot go into cryptography's PKCS#12 writer and are outside Istio's recipe.
PrivateKey: TypeAlias = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
SUPPORTED_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class PkiError(ValueError):
    """A certificate or key is unusable; the message says what is wrong and what to do.

    Messages name certificates by subject, serial or fingerprint and never
    contain key material.
    """


@dataclass(frozen=True, eq=False, repr=False)
class CertKeyPair:
    """A certificate together with its private key, held in memory only.

    ``repr()`` shows the subject, serial and key type but never key material,
    so a pair can safely appear in logs and exception messages. Pairs compare
    by identity, because private key objects have no value equality.

    Attributes:
        cert: The X.509 certificate.
        key: The private key whose public half is in ``cert``.
    """

    cert: x509.Certificate
    key: PrivateKey

    def __repr__(self) -> str:
        return (
            f"CertKeyPair(subject={describe(self.cert)!r}, serial={self.cert.serial_number:#x}, "
            f"key=<{key_label(self.key)} private key>)"
        )

    def cert_pem(self) -> bytes:
        """Return the certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """Return the private key as unencrypted PKCS#8 PEM.

        Unencrypted on purpose: it feeds Key Vault imports and Kubernetes
        secrets, which do their own encryption. Keep the bytes in memory only.
        """
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def key_matches(self) -> bool:
        """Return True when the private key belongs to the certificate."""
        return key_matches_cert(self.key, self.cert)


def checked_now(now: datetime) -> datetime:
    """Return ``now`` in UTC truncated to whole seconds.

    X.509 times carry whole seconds, so truncating keeps computed validity
    periods exact and comparable with what is read back from a certificate.

    Raises:
        PkiError: ``now`` is naive; a naive time would silently be local time.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise PkiError("`now` must be timezone-aware; pass datetime.now(UTC), not datetime.now()")
    return now.astimezone(UTC).replace(microsecond=0)


def describe(cert: x509.Certificate) -> str:
    """Return a certificate's subject as an RFC 4514 string for messages."""
    return cert.subject.rfc4514_string() or f"<empty subject, serial {cert.serial_number:#x}>"


def key_label(key: PrivateKey) -> str:
    """Return a short, secret-free label such as ``RSA-4096`` for a private key."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC-{key.curve.name}"
    return type(key).__name__.removesuffix("PrivateKey")


def key_matches_cert(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Return True when ``key`` is the private half of ``cert``'s public key."""
    return _spki(key.public_key()) == _spki(cert.public_key())


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    # Comparing SubjectPublicKeyInfo DER works for every key type alike.
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signing_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """Return the hash to sign with: SHA-256, or None for Ed25519/Ed448 (they hash internally)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    """Return the basicConstraints extension value, or None when absent."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    """Return the keyUsage extension value, or None when absent."""
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def is_ca(cert: x509.Certificate) -> bool:
    """Return True when basicConstraints says CA:true."""
    constraints = basic_constraints(cert)
    return constraints is not None and constraints.ca


def is_self_signed(cert: x509.Certificate) -> bool:
    """Return True when the certificate names itself as issuer and its own key signed it."""
    if cert.subject != cert.issuer:
        return False
    return signature_problem(cert, cert) is None


def signature_problem(child: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Return why ``issuer`` did not sign ``child`` (name or signature), or None if it did."""
    try:
        child.verify_directly_issued_by(issuer)
    except InvalidSignature:
        return "signature does not verify with the issuer's public key"
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography raises ValueError for a name mismatch and TypeError or
        # UnsupportedAlgorithm for key/signature types it cannot check.
        return str(exc) or type(exc).__name__
    return None
