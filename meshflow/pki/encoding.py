"""Serialise and parse certificates and keys: PEM, PKCS#12, fingerprints.

Formats are the ones Istio and Azure Key Vault consume: ``cert-chain.pem``
(intermediate then root), unencrypted PKCS#8 keys, key-then-certificate PEM
bundles (Key Vault's ``application/x-pem-file``) and PKCS#12 (``.pfx``).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from meshflow.pki._base import (
    SUPPORTED_KEY_TYPES,
    CertKeyPair,
    PkiError,
    PrivateKey,
    describe,
    key_matches_cert,
    signature_problem,
)

Pkcs12Encryption: TypeAlias = Literal["aes256", "3des"]
# PBKDF2 rounds for password-protected PKCS#12. 100k is well above the old
# 2048 default yet keeps the whole file (key bag + certificate bag) under the
# 600k total-iteration limit .NET/Windows importers enforce.
PKCS12_KDF_ROUNDS = 100_000


@dataclass(frozen=True, repr=False)
class Pkcs12Contents:
    """What :func:`from_pkcs12` found in a PKCS#12 file.

    Attributes:
        pair: The certificate that matches the key, and the key.
        chain: The other certificates in the file, in file order.
        name: The friendly name of the key's certificate, if any.
    """

    pair: CertKeyPair
    chain: tuple[x509.Certificate, ...]
    name: str | None

    def __repr__(self) -> str:
        chain = f"{len(self.chain)} cert(s)"
        return f"Pkcs12Contents(pair={self.pair!r}, chain={chain}, name={self.name!r})"


def load_pem_chain(pem: bytes) -> list[x509.Certificate]:
    """Parse every PEM certificate in ``pem``, in order.

    Args:
        pem: One or more ``BEGIN CERTIFICATE`` blocks (other blocks are ignored).

    Returns:
        The certificates in the order they appear.

    Raises:
        PkiError: No certificate was found or one is malformed.
    """
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise PkiError(
            f"could not read PEM certificates ({exc}); pass the bytes of a .pem file "
            "with one or more -----BEGIN CERTIFICATE----- blocks"
        ) from None


def load_private_key(
    key_pem: bytes, *, password: bytes | None = None, trusted: bool = False
) -> PrivateKey:
    """Parse a PEM private key (PKCS#8 or traditional) that can sign certificates.

    Args:
        key_pem: The PEM bytes.
        password: The passphrase if the PEM is encrypted.
        trusted: Skip OpenSSL's RSA consistency check (primality of p and q; slow for RSA
            4096, see ``docs/design.md``). Only for keys this project generated and stored
            itself, whose signatures the caller verifies against the certificate before use.

    Returns:
        The private key.

    Raises:
        PkiError: The PEM is not a key, is encrypted without the right
            password, or holds a key type we cannot use.
    """
    try:
        key = serialization.load_pem_private_key(
            key_pem, password=password, unsafe_skip_rsa_key_validation=trusted
        )
    except (ValueError, TypeError):
        # The original message is dropped on purpose: nothing about the key
        # bytes should end up in logs.
        raise PkiError(
            "could not read the private key PEM: it is malformed, or encrypted and the "
            "password is missing or wrong; pass an unencrypted PKCS#8 PEM or the password"
        ) from None
    if not isinstance(key, SUPPORTED_KEY_TYPES):
        raise PkiError(
            f"private key type {type(key).__name__} cannot be used here; use RSA, EC or EdDSA"
        )
    return key


def load_cert_key_pair(
    cert_pem: bytes, key_pem: bytes, *, password: bytes | None = None, trusted: bool = False
) -> CertKeyPair:
    """Parse a certificate and its private key and check they belong together.

    Args:
        cert_pem: PEM with the certificate first (later certificates are ignored).
        key_pem: The private key PEM.
        password: The key's passphrase if it is encrypted.
        trusted: See :func:`load_private_key`; the key is still matched to the certificate.

    Returns:
        The pair.

    Raises:
        PkiError: Either part is unreadable or the key is not the certificate's.
    """
    cert = load_pem_chain(cert_pem)[0]
    key = load_private_key(key_pem, password=password, trusted=trusted)
    if not key_matches_cert(key, cert):
        raise PkiError(
            f"the private key does not match certificate {describe(cert)!r} "
            f"(serial {cert.serial_number:#x}); load the key that was issued with it"
        )
    return CertKeyPair(cert=cert, key=key)


def cert_chain_pem(intermediate: x509.Certificate, root: x509.Certificate) -> bytes:
    """Return Istio's ``cert-chain.pem``: the intermediate, then the root.

    Args:
        intermediate: The cluster's intermediate CA certificate.
        root: The root that signed it.

    Returns:
        The two certificates as concatenated PEM.

    Raises:
        PkiError: ``root`` did not sign ``intermediate``, so the chain would
            not verify in the mesh.
    """
    problem = signature_problem(intermediate, root)
    if problem is not None:
        raise PkiError(
            f"{describe(intermediate)!r} was not signed by root {describe(root)!r} ({problem}); "
            "pass the root that issued it, or reissue the intermediate from this root"
        )
    return _pem(intermediate) + _pem(root)


def pem_bundle(pair: CertKeyPair, chain: Sequence[x509.Certificate] = ()) -> bytes:
    """Return key PEM (PKCS#8) followed by the certificate and ``chain`` PEMs.

    This is the layout Key Vault imports as ``application/x-pem-file``: the
    key must come first and be unencrypted PKCS#8.

    Args:
        pair: The certificate and key.
        chain: Further certificates to append (issuer first).

    Returns:
        The concatenated PEM bytes. They contain the private key: keep in memory.
    """
    return pair.key_pem() + pair.cert_pem() + b"".join(_pem(cert) for cert in chain)


def to_pkcs12(
    pair: CertKeyPair,
    *,
    name: str,
    chain: Sequence[x509.Certificate] = (),
    password: bytes = b"",
    encryption: Pkcs12Encryption = "aes256",
    kdf_rounds: int = PKCS12_KDF_ROUNDS,
) -> bytes:
    """Serialise a pair (and optional chain) to PKCS#12 for Key Vault import.

    With an empty password the key and certificate bags are stored
    unencrypted (cryptography refuses an empty encryption password, and Key
    Vault takes password-less PFX) but the file still carries a SHA-256 MAC
    under the empty password, so ``openssl pkcs12 -passin pass:`` reads it.
    With a password, ``"aes256"`` writes PBES2/PBKDF2-HMAC-SHA-256/AES-256-CBC
    with a SHA-256 MAC; ``"3des"`` writes the legacy PKCS#12 3DES/SHA-1 form
    for importers that reject PBES2 (older Key Vault and Windows stacks have
    been reported to).

    Args:
        pair: The certificate and key.
        name: Friendly name stored with the certificate; empty for none.
        chain: CA certificates to include (issuer first).
        password: Protects the file; empty for none.
        encryption: Algorithm family used when a password is given.
        kdf_rounds: Key-derivation iterations used when a password is given.

    Returns:
        The PKCS#12 bytes.
    """
    return pkcs12.serialize_key_and_certificates(
        name.encode() if name else None,
        pair.key,
        pair.cert,
        list(chain) or None,
        _pkcs12_encryption(password, encryption, kdf_rounds),
    )


def from_pkcs12(blob: bytes, password: bytes = b"") -> Pkcs12Contents:
    """Parse a PKCS#12 file that holds a private key and its certificate.

    Args:
        blob: The PKCS#12 bytes (decode Key Vault's base64 secret value first).
        password: The file's password; empty for none.

    Returns:
        The pair, the remaining certificates and the friendly name.

    Raises:
        PkiError: Wrong password, not PKCS#12, or no usable key/certificate.
    """
    parsed = _load_pkcs12(blob, password)
    if parsed.key is None or parsed.cert is None:
        raise PkiError(
            "the PKCS#12 data holds no private key and certificate; export it with the key"
        )
    key = parsed.key
    if not isinstance(key, SUPPORTED_KEY_TYPES):
        raise PkiError(
            f"PKCS#12 key type {type(key).__name__} cannot be used; use RSA, EC or EdDSA"
        )
    cert = parsed.cert.certificate
    if not key_matches_cert(key, cert):
        raise PkiError(
            f"in the PKCS#12 data the key does not match {describe(cert)!r}; re-export it"
        )
    friendly = parsed.cert.friendly_name
    return Pkcs12Contents(
        pair=CertKeyPair(cert=cert, key=key),
        chain=tuple(extra.certificate for extra in parsed.additional_certs),
        name=friendly.decode(errors="replace") if friendly else None,
    )


def sha1_thumbprint_hex(cert: x509.Certificate) -> str:
    """Return the SHA-1 thumbprint as uppercase hex, as Azure and Windows show it."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - an identifier, not security


def x5t(cert: x509.Certificate) -> str:
    """Return Key Vault's ``x5t``: base64url SHA-1 of the DER certificate, no padding."""
    digest = cert.fingerprint(hashes.SHA1())  # noqa: S303 - an identifier, not security
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sha256_fingerprint(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint as ``AB:CD:...`` hex, as ``openssl -fingerprint`` does."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pkcs12_encryption(
    password: bytes, encryption: Pkcs12Encryption, kdf_rounds: int
) -> serialization.KeySerializationEncryption:
    if not password:
        return serialization.NoEncryption()
    if kdf_rounds < 1:
        raise PkiError(f"kdf_rounds must be at least 1; got {kdf_rounds}")
    builder = serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(kdf_rounds)
    if encryption == "aes256":
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(
            hashes.SHA256()
        )
    elif encryption == "3des":
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(
            hashes.SHA1()  # noqa: S303 - the legacy format only defines SHA-1 MACs
        )
    else:
        raise PkiError(f"unknown PKCS#12 encryption {encryption!r}; use 'aes256' or '3des'")
    return builder.build(password)


def _load_pkcs12(blob: bytes, password: bytes) -> pkcs12.PKCS12KeyAndCertificates:
    # An empty password may mean "no password" (our own unencrypted output) or
    # "the empty string" (openssl -passout pass:); PKCS#12 encodes them
    # differently, so try both.
    candidates: list[bytes | None] = [password] if password else [None, b""]
    for candidate in candidates:
        try:
            return pkcs12.load_pkcs12(blob, candidate)
        except ValueError:
            continue
    raise PkiError(
        "could not open the PKCS#12 data: the password is wrong or it is not PKCS#12 "
        "(base64-decode Key Vault secret values first)"
    )
