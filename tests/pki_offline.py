"""Throwaway CAs made in memory for tests; the product lets Key Vault make and hold the keys
(tasks/pki.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from meshflow import pki
from meshflow.pki import CertKeyPair


def _new_key(key_size: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def generate_root_ca(
    *,
    now: datetime,
    key_size: int = pki.CA_KEY_SIZE,
    days: int = pki.ROOT_DAYS,
    organization: str = "Istio",
    common_name: str = "Root CA",
    backdate: timedelta = pki.DEFAULT_BACKDATE,
) -> CertKeyPair:
    """A self-signed root CA (``O=Istio, CN=Root CA`` by default) and its new key.

    :func:`meshflow.pki.root_ca_certificate` makes the certificate, signing with the key here;
    another subject (e.g. an unrelated root that must not share the mesh root's name) is the
    same certificate re-signed under that name.
    """
    key = _new_key(key_size)
    signer = pki.local_signer(key)
    cert = pki.root_ca_certificate(
        key.public_key(), signer, created=now, days=days, backdate=backdate
    )
    name = pki.root_ca_subject(organization=organization, common_name=common_name)
    if name != cert.subject:
        cert = _renamed(cert, name, signer)
    return CertKeyPair(cert=cert, key=key)


def _renamed(cert: x509.Certificate, name: x509.Name, signer: pki.SignDigest) -> x509.Certificate:
    """``cert`` as a self-signed certificate named ``name``; all else (extensions, ...) kept."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return pki.sign_with(builder, signer)


def generate_intermediate_ca(
    root: CertKeyPair,
    *,
    cluster: str,
    now: datetime,
    key_size: int = pki.CA_KEY_SIZE,
    days: int = pki.INTERMEDIATE_DAYS,
    san_dns: str = pki.ISTIOD_SAN,
    backdate: timedelta = pki.DEFAULT_BACKDATE,
) -> CertKeyPair:
    """A new key and the intermediate CA :func:`meshflow.pki.issue_intermediate_ca` signs for it."""
    key = _new_key(key_size)
    cert = pki.issue_intermediate_ca(
        root, key.public_key(), cluster=cluster, now=now, key_size=key_size, days=days,
        san_dns=san_dns, backdate=backdate,
    )  # fmt: skip
    return CertKeyPair(cert=cert, key=key)


def generate_ingress_leaf(
    issuer: CertKeyPair,
    *,
    now: datetime,
    host: str = pki.ECHOSERVER_HOST,
    key_size: int = pki.LEAF_KEY_SIZE,
    days: int = pki.LEAF_DAYS,
    organization: str = "Istio Services",
    backdate: timedelta = pki.DEFAULT_BACKDATE,
) -> CertKeyPair:
    """A new key and the ingress leaf :func:`meshflow.pki.issue_ingress_leaf` signs for it."""
    key = _new_key(key_size)
    cert = pki.issue_ingress_leaf(
        issuer, key.public_key(), now=now, host=host, key_size=key_size, days=days,
        organization=organization, backdate=backdate,
    )  # fmt: skip
    return CertKeyPair(cert=cert, key=key)
