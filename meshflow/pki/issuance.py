"""Issue the mesh's certificates in the profile of Istio's ``tools/certs`` recipe.

The root and per-cluster intermediate CAs mirror ``root-ca.conf`` and
``intermediate.conf`` from Istio's ``tools/certs/common.mk`` (RSA 4096,
3650 and 730 days, SHA-256, the same subjects and extensions). The ingress
leaf mirrors the echoserver sample: RSA 2048, 365 days, signed by the root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshflow.pki._base import (
    CertKeyPair,
    PkiError,
    basic_constraints,
    checked_now,
    describe,
    is_ca,
    key_matches_cert,
    key_usage,
    signature_problem,
    signing_hash,
)
from meshflow.pki.signing import RemoteIssuer, SignDigest, sign_with

ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 730
LEAF_DAYS = 365
CA_KEY_SIZE = 4096
LEAF_KEY_SIZE = 2048
ISTIOD_SAN = "istiod.istio-system.svc"
ECHOSERVER_HOST = "echoserver.echoserver.svc.cluster.local"
# notBefore is set this far before `now` so a node whose clock runs a little
# behind the machine that issued the certificate does not reject it as
# "not yet valid". notAfter is still counted from `now`.
DEFAULT_BACKDATE = timedelta(hours=1)

_MIN_RSA_BITS = 2048
_MAX_LOCALITY_LEN = 128  # X.520 ub-locality-name
_MAX_COMMON_NAME_LEN = 64  # X.520 ub-common-name

# keyUsage of both CAs, as in Istio's root-ca.conf and intermediate.conf:
# digitalSignature, nonRepudiation, keyEncipherment, keyCertSign.
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=True,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)

_Extensions = Sequence[tuple[x509.ExtensionType, bool]]

Issuer: TypeAlias = CertKeyPair | RemoteIssuer
"""Who signs: a CA with its key in memory, or one whose key signs elsewhere (Key Vault)."""


def root_ca_subject(*, organization: str = "Istio", common_name: str = "Root CA") -> x509.Name:
    """``O=Istio, CN=Root CA``: the mesh root's subject, as in Istio's ``root-ca.conf``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _root_extensions(public_key: CertificatePublicKeyTypes) -> _Extensions:
    return [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (_CA_KEY_USAGE, True),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
    ]


def root_ca_certificate(
    public_key: rsa.RSAPublicKey,
    sign_digest: SignDigest,
    *,
    created: datetime,
    days: int = ROOT_DAYS,
    backdate: timedelta = DEFAULT_BACKDATE,
) -> x509.Certificate:
    """The self-signed root CA certificate of an RSA key that signs elsewhere (Key Vault).

    Deterministic: the validity starts ``backdate`` before the key's ``created`` time, the
    serial is derived from the public key and that time, and RSASSA-PKCS1-v1_5 signatures are
    deterministic, so every run that makes the certificate of one key version makes the same
    bytes (two concurrent installs cannot publish two different roots for one key).

    Raises:
        PkiError: a parameter is out of range, the key is not RSA of at least 2048 bits, or
            the signature does not verify with ``public_key`` (the signer used another key).
    """
    created = checked_now(created)
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < _MIN_RSA_BITS:
        raise PkiError(f"the root CA key must be RSA of at least {_MIN_RSA_BITS} bits")
    not_before, not_after = _validity(created, days, backdate, issuer=None)
    name = root_ca_subject()
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    seed = hashlib.sha256(spki + created.isoformat().encode()).digest()
    serial = int.from_bytes(seed[:20], "big") >> 1 or 1  # positive, at most 159 bits
    cert = sign_with(
        _builder(
            name, public_key, name, (not_before, not_after), _root_extensions(public_key)
        ).serial_number(serial),
        sign_digest,
    )
    problem = signature_problem(cert, cert)
    if problem:
        raise PkiError(f"the root CA certificate does not verify with its own key: {problem}")
    return cert


def intermediate_ca_subject(
    cluster: str, *, organization: str = "Istio", common_name: str = "Intermediate CA"
) -> x509.Name:
    """``O=Istio, CN=Intermediate CA, L=<cluster>``: a cluster's intermediate CA subject.

    Raises:
        PkiError: ``cluster`` is empty or too long for subject L.
    """
    if not cluster or len(cluster) > _MAX_LOCALITY_LEN:
        raise PkiError(
            f"cluster name must be 1..{_MAX_LOCALITY_LEN} characters (it becomes subject L); "
            f"got {len(cluster)}"
        )
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.LOCALITY_NAME, cluster),
        ]
    )


def issue_intermediate_ca(
    root: Issuer,
    public_key: CertificatePublicKeyTypes,
    *,
    cluster: str,
    now: datetime,
    key_size: int = CA_KEY_SIZE,
    days: int = INTERMEDIATE_DAYS,
    san_dns: str = ISTIOD_SAN,
    backdate: timedelta = DEFAULT_BACKDATE,
) -> x509.Certificate:
    """Sign a cluster's intermediate CA certificate (istiod's ``ca-cert.pem``) for ``public_key``.

    The key is someone else's (Key Vault generates it and hands out only a CSR); ``root`` signs.
    The subject is :func:`intermediate_ca_subject`, with basicConstraints ``CA:true, pathlen:0``
    so istiod can sign workloads but not further CAs. notAfter is clamped to the root's
    notAfter (and notBefore to the root's notBefore): a certificate cannot usefully outlive the
    root it chains to, and verifiers would reject it then anyway.

    Args:
        root: The signing root CA: with its key in memory, or a :class:`RemoteIssuer`.
        public_key: The intermediate's public key: RSA of exactly ``key_size`` bits.
        cluster: Cluster name, stored as subject L.
        now: Current time, timezone-aware.
        key_size: RSA modulus bits the key must have; Istio uses 4096.
        days: Validity in days before clamping.
        san_dns: The DNS subjectAltName istiod serves under.
        backdate: How far notBefore lies before ``now`` to tolerate clock skew.

    Raises:
        PkiError: A parameter is out of range, the key is not RSA of ``key_size`` bits, or
            ``root`` cannot issue CAs now.
    """
    profile = _IntermediateProfile.checked(root, cluster, now, days, san_dns, backdate)
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size != key_size:
        kind = type(public_key).__name__.removesuffix("PublicKey").lstrip("_").upper()
        raise PkiError(
            f"the intermediate CA key of {cluster!r} must be RSA {key_size}; "
            f"got {kind} {getattr(public_key, 'key_size', '?')}"
        )
    return profile.sign(root, public_key)


@dataclass(frozen=True)
class _IntermediateProfile:
    """An intermediate's subject, SAN and validity, checked before its key or any signing."""

    name: x509.Name
    san_dns: str
    validity: tuple[datetime, datetime]

    @classmethod
    def checked(
        cls,
        root: Issuer,
        cluster: str,
        now: datetime,
        days: int,
        san_dns: str,
        backdate: timedelta,
    ) -> _IntermediateProfile:
        now = checked_now(now)
        name = intermediate_ca_subject(cluster)
        san_dns = _dns_name(san_dns)
        _check_issuer(root, now, issues_ca=True)
        return cls(name, san_dns, _validity(now, days, backdate, issuer=root.cert))

    def sign(self, root: Issuer, public_key: CertificatePublicKeyTypes) -> x509.Certificate:
        extensions: _Extensions = [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (_CA_KEY_USAGE, True),
            (x509.SubjectAlternativeName([x509.DNSName(self.san_dns)]), False),
            (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
            (_authority_key_id(root.cert), False),
        ]
        return _sign(self.name, public_key, root.cert.subject, root, self.validity, extensions)


def ingress_leaf_subject(
    host: str = ECHOSERVER_HOST, *, organization: str = "Istio Services"
) -> x509.Name:
    """``CN=<host>, O=Istio Services``: the ingress backend certificate's subject.

    Raises:
        PkiError: ``host`` is not a usable DNS name or is too long for a CN.
    """
    host = _dns_name(host)
    if len(host) > _MAX_COMMON_NAME_LEN:
        raise PkiError(
            f"host {host!r} is longer than {_MAX_COMMON_NAME_LEN} characters, the limit for a "
            "subject CN; use a shorter name"
        )
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, host),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


def issue_ingress_leaf(
    issuer: Issuer,
    public_key: CertificatePublicKeyTypes,
    *,
    now: datetime,
    host: str = ECHOSERVER_HOST,
    key_size: int = LEAF_KEY_SIZE,
    days: int = LEAF_DAYS,
    organization: str = "Istio Services",
    backdate: timedelta = DEFAULT_BACKDATE,
) -> x509.Certificate:
    """Sign the ingress backend's server certificate (``CN=<host>, O=Istio Services``).

    For a key held elsewhere (Key Vault generates it). It carries ``CA:false``, keyUsage
    digitalSignature+keyEncipherment, extendedKeyUsage serverAuth and ``DNS:<host>`` (modern
    TLS clients ignore the CN). notAfter is clamped to the issuer's notAfter.

    Raises:
        PkiError: a parameter is out of range, the key is not RSA of ``key_size`` bits, or
            ``issuer`` cannot issue now.
    """
    now = checked_now(now)
    name = ingress_leaf_subject(host, organization=organization)
    host = _dns_name(host)
    _check_issuer(issuer, now, issues_ca=False)
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size != key_size:
        raise PkiError(f"the ingress certificate's key must be RSA {key_size}")
    validity = _validity(now, days, backdate, issuer=issuer.cert)
    extensions: _Extensions = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        # RFC 5280 4.2.1.3: keyUsage SHOULD be critical when present.
        (_LEAF_KEY_USAGE, True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName([x509.DNSName(host)]), False),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
        (_authority_key_id(issuer.cert), False),
    ]
    return _sign(name, public_key, issuer.cert.subject, issuer, validity, extensions)


def _dns_name(host: str) -> str:
    if not host or not host.isascii() or any(ch.isspace() for ch in host):
        raise PkiError(f"{host!r} is not a usable DNS name; pass an ASCII host name without spaces")
    return host


def _validity(
    now: datetime, days: int, backdate: timedelta, *, issuer: x509.Certificate | None
) -> tuple[datetime, datetime]:
    if days < 1:
        raise PkiError(f"validity must be at least 1 day; got days={days}")
    if backdate < timedelta(0):
        raise PkiError(f"backdate must not be negative; got {backdate}")
    not_before = now - backdate
    not_after = now + timedelta(days=days)
    if issuer is not None:
        # Keep the child inside the issuer's validity window (see the callers).
        not_before = max(not_before, issuer.not_valid_before_utc)
        not_after = min(not_after, issuer.not_valid_after_utc)
    return not_before, not_after


def _check_issuer(issuer: Issuer, now: datetime, *, issues_ca: bool) -> None:
    name = describe(issuer.cert)
    # A remote key is checked after signing: the signature must verify with the certificate.
    if isinstance(issuer, CertKeyPair) and not key_matches_cert(issuer.key, issuer.cert):
        raise PkiError(f"the issuer key does not belong to {name!r}; load the key issued with it")
    usage = key_usage(issuer.cert)
    if not is_ca(issuer.cert) or (usage is not None and not usage.key_cert_sign):
        raise PkiError(f"{name!r} is not a CA (needs CA:true and keyCertSign); sign with a CA")
    if not issuer.cert.not_valid_before_utc <= now <= issuer.cert.not_valid_after_utc:
        raise PkiError(
            f"issuer {name!r} is not valid at {now:%Y-%m-%dT%H:%M:%SZ} (valid "
            f"{issuer.cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{issuer.cert.not_valid_after_utc:%Y-%m-%d}); renew it before issuing"
        )
    constraints = basic_constraints(issuer.cert)
    if issues_ca and constraints is not None and constraints.path_length == 0:
        raise PkiError(
            f"{name!r} has pathlen:0 and may not sign CA certificates; sign with the root"
        )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Copy the issuer's own SKI so AKI matches it byte for byte even if the
    # issuer computed its SKI by another method; hash its key only if absent.
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _builder(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer_name: x509.Name,
    validity: tuple[datetime, datetime],
    extensions: _Extensions,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder


def _sign(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer_name: x509.Name,
    issuer: Issuer,
    validity: tuple[datetime, datetime],
    extensions: _Extensions,
) -> x509.Certificate:
    # 159 random bits: unpredictable, positive and within RFC 5280's 20 octets.
    builder = _builder(subject, public_key, issuer_name, validity, extensions).serial_number(
        x509.random_serial_number()
    )
    if isinstance(issuer, RemoteIssuer):
        cert = sign_with(builder, issuer.sign_digest)
        problem = signature_problem(cert, issuer.cert)
        if problem:
            raise PkiError(
                f"{describe(issuer.cert)!r} signed {describe(cert)!r}, but the signature does "
                f"not verify with its certificate ({problem}): the signer holds another key"
            )
        return cert
    return builder.sign(issuer.key, signing_hash(issuer.key))
