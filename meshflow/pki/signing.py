"""Certificates signed by a key that is not here: Key Vault's ``sign`` operation, for instance.

``cryptography`` signs a certificate only with a private key object it holds. To sign with a
key that never leaves a vault, the to-be-signed part (TBSCertificate) is built by
``cryptography`` with a throwaway placeholder key of the same algorithm, its SHA-256 digest is
handed to the real signer (RSASSA-PKCS1-v1_5, i.e. Key Vault's ``RS256``), and the certificate
is reassembled from the TBS bytes, the algorithm identifier and the real signature. Everything
the certificate says (names, keys, extensions, validity, serial) is in the TBS; the placeholder
contributes only the algorithm identifier, which is the same for every RSA key. Callers verify
the result against the issuer's certificate, so a signer that answers with the wrong key's
signature is caught before anything is stored.

Pure: no SDK, no I/O; the signer is a callable the caller provides.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding

SignDigest = Callable[[bytes], bytes]
"""Signs a SHA-256 digest with RSASSA-PKCS1-v1_5 and returns the signature (RS256)."""


@dataclass(frozen=True)
class RemoteIssuer:
    """A CA certificate whose key signs elsewhere (in Key Vault): what issuance needs of it.

    ``sign_digest`` must sign with the key of ``cert``; every certificate issued through it is
    verified against ``cert`` before it is returned.
    """

    cert: x509.Certificate
    sign_digest: SignDigest

    def __repr__(self) -> str:
        return f"RemoteIssuer(subject={self.cert.subject.rfc4514_string()!r})"


def local_signer(key: rsa.RSAPrivateKey) -> SignDigest:
    """A :data:`SignDigest` over a key in memory: the same operation Key Vault's RS256 does."""

    def sign(digest: bytes) -> bytes:
        return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    return sign


@functools.cache
def _placeholder_key() -> rsa.RSAPrivateKey:
    # Only its algorithm identifier reaches a certificate; its signatures are thrown away.
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - signs nothing that is kept


def sign_with(builder: x509.CertificateBuilder, sign_digest: SignDigest) -> x509.Certificate:
    """The certificate ``builder`` describes, signed (SHA-256 with RSA) by ``sign_digest``."""
    draft = builder.sign(_placeholder_key(), hashes.SHA256())
    tbs = draft.tbs_certificate_bytes
    signature = sign_digest(hashlib.sha256(tbs).digest())
    algorithm = _algorithm_identifier(draft.public_bytes(_DER), tbs)
    der = _tlv(0x30, tbs + algorithm + _tlv(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


# -- just enough DER to take a certificate apart and put it back together -----------------

_DER = Encoding.DER


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _read_tlv(data: bytes, offset: int) -> tuple[int, int]:
    """``(start of content, end of element)`` of the element at ``offset``."""
    first = data[offset + 1]
    if first < 0x80:
        return offset + 2, offset + 2 + first
    count = first & 0x7F
    length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
    start = offset + 2 + count
    return start, start + length


def _algorithm_identifier(certificate: bytes, tbs: bytes) -> bytes:
    """The signatureAlgorithm element that follows the TBS inside a certificate."""
    content, _ = _read_tlv(certificate, 0)
    if certificate[content : content + len(tbs)] != tbs:
        raise ValueError("the draft certificate does not start with its TBS part")
    after = content + len(tbs)
    _, end = _read_tlv(certificate, after)
    return certificate[after:end]
