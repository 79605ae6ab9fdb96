"""Inspect a certificate bundle and list every way it misses expectations.

Used before uploading to Key Vault and after reading back from it: one
report says what the bundle is (subject, validity, CA flags, SANs, ...) and
:attr:`BundleReport.problems` says, in plain words, what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from meshflow.pki._base import (
    PrivateKey,
    basic_constraints,
    checked_now,
    key_matches_cert,
    key_usage,
)
from meshflow.pki.encoding import sha256_fingerprint
from meshflow.pki.verify import days_left, verify_chain

_WEAK_HASHES = frozenset({"md5", "sha1"})
_SAN_PREFIXES = ("DNS:", "IP:", "URI:", "email:")
_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


@dataclass(frozen=True)
class BundleReport:
    """What a certificate bundle is, and (via :attr:`problems`) what is wrong with it.

    Attributes:
        subject: Subject, RFC 4514.
        issuer: Issuer, RFC 4514.
        serial: Serial number.
        not_before: Start of validity (UTC).
        not_after: End of validity (UTC).
        checked_at: The ``now`` the report was made for (UTC).
        days_left: Whole days until ``not_after``, floored; negative once expired.
        is_ca: basicConstraints CA flag.
        path_length: basicConstraints pathlen, None when unlimited or absent.
        sans: subjectAltNames as ``DNS:x``, ``IP:x``, ``URI:x`` or ``email:x``.
        key_usage: keyUsage flags set (cryptography attribute names); empty if absent.
        key_type: Public key type and size, e.g. ``RSA-4096``.
        signature_hash: Signature hash name, e.g. ``sha256``; None for EdDSA.
        sha256_fingerprint: Colon-separated SHA-256 fingerprint.
        key_matches: Whether the given private key fits; None when no key was given.
        chain_ok: Whether the certificate verifies to a trusted root.
        chain_error: Why it does not, or None.
        expect_ca: Expected CA flag, None for no expectation.
        expect_pathlen: Expected pathlen, None for no expectation.
        expect_sans: SANs that must be present, normalised to ``DNS:x`` form.
    """

    subject: str
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    checked_at: datetime
    days_left: int
    is_ca: bool
    path_length: int | None
    sans: list[str]
    key_usage: list[str]
    key_type: str
    signature_hash: str | None
    sha256_fingerprint: str
    key_matches: bool | None
    chain_ok: bool
    chain_error: str | None
    expect_ca: bool | None = None
    expect_pathlen: int | None = None
    expect_sans: tuple[str, ...] = ()

    @property
    def problems(self) -> list[str]:
        """Every failed expectation in plain words; empty when all is well."""
        return [
            *self._time_problems(),
            *self._key_problems(),
            *self._profile_problems(),
            *[f"missing subjectAltName {san}" for san in self.expect_sans if san not in self.sans],
        ]

    @property
    def ok(self) -> bool:
        """True when :attr:`problems` is empty."""
        return not self.problems

    def _time_problems(self) -> list[str]:
        if self.checked_at < self.not_before:
            return [
                f"not yet valid: valid from {self.not_before:%Y-%m-%dT%H:%M:%SZ}; check the clock"
            ]
        if self.checked_at > self.not_after:
            return [f"expired at {self.not_after:%Y-%m-%dT%H:%M:%SZ}; reissue it"]
        return []

    def _key_problems(self) -> list[str]:
        problems = []
        if self.key_matches is False:
            problems.append("private key does not match certificate; pair it with its own key")
        if not self.chain_ok:
            problems.append(f"chain does not verify to the root: {self.chain_error}")
        if self.signature_hash in _WEAK_HASHES:
            problems.append(f"signed with weak hash {self.signature_hash}; reissue with SHA-256")
        return problems

    def _profile_problems(self) -> list[str]:
        problems = []
        if self.expect_ca is True and not self.is_ca:
            problems.append("expected a CA certificate but basicConstraints is not CA:true")
        if self.expect_ca is False and self.is_ca:
            problems.append("expected an end-entity certificate but it is a CA")
        if self.is_ca and self.key_usage and "key_cert_sign" not in self.key_usage:
            problems.append("CA certificate's keyUsage lacks keyCertSign, so it cannot sign")
        if self.expect_pathlen is not None and self.path_length != self.expect_pathlen:
            shown = "unlimited" if self.path_length is None else str(self.path_length)
            problems.append(f"pathlen is {shown}, expected pathlen:{self.expect_pathlen}")
        return problems


def inspect_bundle(
    cert: x509.Certificate,
    *,
    now: datetime,
    key: PrivateKey | None = None,
    chain: Sequence[x509.Certificate] = (),
    roots: Sequence[x509.Certificate] = (),
    expect_ca: bool | None = None,
    expect_pathlen: int | None = None,
    expect_sans: Sequence[str] = (),
) -> BundleReport:
    """Describe a certificate (with optional key and chain) and check it.

    Never raises for a bad bundle: failures land in
    :attr:`BundleReport.problems`.

    Args:
        cert: The leaf or CA certificate under inspection.
        now: Time to check validity at, timezone-aware.
        key: Its private key, if it should be checked against the certificate.
        chain: Untrusted certificates to build the path (e.g. ``cert-chain.pem``).
        roots: Trusted roots; with none, the chain is reported as unverified.
        expect_ca: Required CA flag, or None to not check.
        expect_pathlen: Required pathlen (e.g. 0 for Istio intermediates), or None.
        expect_sans: SANs that must be present; bare names mean ``DNS:<name>``.

    Returns:
        The report.
    """
    now = checked_now(now)
    constraints = basic_constraints(cert)
    result = verify_chain(cert, chain, roots, now)
    return BundleReport(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        checked_at=now,
        days_left=days_left(cert, now=now),
        is_ca=constraints is not None and constraints.ca,
        path_length=constraints.path_length if constraints is not None else None,
        sans=san_strings(cert),
        key_usage=_key_usage_flags(cert),
        key_type=_public_key_label(cert.public_key()),
        signature_hash=_signature_hash(cert),
        sha256_fingerprint=sha256_fingerprint(cert),
        key_matches=None if key is None else key_matches_cert(key, cert),
        chain_ok=result.ok,
        chain_error=result.error,
        expect_ca=expect_ca,
        expect_pathlen=expect_pathlen,
        expect_sans=tuple(_normalise_san(san) for san in expect_sans),
    )


def san_strings(cert: x509.Certificate) -> list[str]:
    """Return the subjectAltNames as ``DNS:x``/``IP:x``/``URI:x``/``email:x`` strings."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [_san_string(name) for name in names]


def _san_string(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    return f"{type(name).__name__}:{name.value!s}"


def _normalise_san(san: str) -> str:
    return san if san.startswith(_SAN_PREFIXES) else f"DNS:{san}"


def _key_usage_flags(cert: x509.Certificate) -> list[str]:
    usage = key_usage(cert)
    if usage is None:
        return []
    return [flag for flag in _KEY_USAGE_FLAGS if getattr(usage, flag)]


def _public_key_label(public_key: CertificatePublicKeyTypes) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC-{public_key.curve.name}"
    return type(public_key).__name__.removesuffix("PublicKey")


def _signature_hash(cert: x509.Certificate) -> str | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unsupported"
    return None if algorithm is None else algorithm.name
