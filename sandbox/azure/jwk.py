"""JSON Web Keys as Key Vault shows them, and its sign/verify algorithms (pure functions).

Key Vault returns only the public half of a key (``n``/``e`` for RSA, ``crv``/``x``/``y`` for EC,
base64url without padding). ``sign`` takes a digest the caller computed, so every algorithm signs
a *prehashed* value: RS256/384/512 are PKCS#1 v1.5, PS256/384/512 are PSS with MGF1 of the same
hash and a salt as long as the digest, ES256/384/512 are ECDSA on P-256/P-384/P-521 with the
signature as ``r || s`` (each as long as the curve's byte size, as JOSE and Key Vault encode it).
A digest of the wrong length for the algorithm, or an algorithm the key type cannot do, is 400
``BadParameter``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .server import HttpError
from .x509util import Key

RSA_TYPES = ("RSA", "RSA-HSM")
EC_TYPES = ("EC", "EC-HSM")
KEY_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export")
_RSA_DEFAULT_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
_EC_OPS = ("sign", "verify")
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


@dataclass(frozen=True)
class _Algorithm:
    family: str  # "RSA" or "EC"
    hash: hashes.HashAlgorithm
    pss: bool = False
    curve: str = ""  # the one curve an ES algorithm works with


ALGORITHMS = {
    "RS256": _Algorithm("RSA", hashes.SHA256()),
    "RS384": _Algorithm("RSA", hashes.SHA384()),
    "RS512": _Algorithm("RSA", hashes.SHA512()),
    "PS256": _Algorithm("RSA", hashes.SHA256(), pss=True),
    "PS384": _Algorithm("RSA", hashes.SHA384(), pss=True),
    "PS512": _Algorithm("RSA", hashes.SHA512(), pss=True),
    "ES256": _Algorithm("EC", hashes.SHA256(), curve="P-256"),
    "ES384": _Algorithm("EC", hashes.SHA384(), curve="P-384"),
    "ES512": _Algorithm("EC", hashes.SHA512(), curve="P-521"),
}


def _bad(message: str) -> HttpError:
    return HttpError(400, "BadParameter", message)


def b64url(data: bytes) -> str:
    """Base64url without padding, as JOSE writes binary values."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_b64url(value: object, field: str) -> bytes:
    """Decode a base64url request field (padding optional).

    Raises:
        HttpError: 400 when the value is not a base64url string.
    """
    if not isinstance(value, str):
        raise _bad(f"Property {field} is required (a base64url string).")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError as exc:
        raise _bad(f"Property {field} is not valid base64url.") from exc


def _int_bytes(value: int, length: int = 0) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def curve_name(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """Key Vault's name (``P-256`` ...) of an EC key's curve."""
    return _CURVE_NAMES.get(key.curve.name, key.curve.name)


def key_operations(kty: str, requested: object) -> list[str]:
    """The ``key_ops`` a new key gets: those requested, or all its type can do.

    Raises:
        HttpError: 400 for an unknown operation, or one an EC key cannot do.
    """
    if requested is None:
        return list(_EC_OPS if kty in EC_TYPES else _RSA_DEFAULT_OPS)
    if not isinstance(requested, list) or not all(isinstance(o, str) for o in requested):
        raise _bad("key_ops must be a list of operation names.")
    allowed = _EC_OPS if kty in EC_TYPES else KEY_OPS
    if unknown := [o for o in requested if o not in allowed]:
        raise _bad(f"Invalid key_ops for a key of type {kty}: {unknown}. Valid: {list(allowed)}.")
    return list(dict.fromkeys(requested))


def public_jwk(key: Key, kid: str, kty: str, key_ops: list[str]) -> dict[str, object]:
    """The public JWK of ``key`` as Key Vault returns it (never any private field)."""
    jwk: dict[str, object] = {"kid": kid, "kty": kty, "key_ops": list(key_ops)}
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        jwk.update(n=b64url(_int_bytes(numbers.n)), e=b64url(_int_bytes(numbers.e)))
    else:
        size = (public.curve.key_size + 7) // 8
        point = public.public_numbers()
        jwk.update(
            crv=curve_name(public),
            x=b64url(_int_bytes(point.x, size)),
            y=b64url(_int_bytes(point.y, size)),
        )
    return jwk


def _algorithm_for(key: Key, alg: object, digest: bytes) -> _Algorithm:
    found = ALGORITHMS.get(alg) if isinstance(alg, str) else None
    if found is None:
        raise _bad(f"Invalid algorithm '{alg}'. Key Vault signs with {sorted(ALGORITHMS)}.")
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    if (found.family == "RSA") != is_rsa:
        kind = "an RSA" if is_rsa else "an EC"
        raise _bad(f"Algorithm '{alg}' cannot be used with {kind} key.")
    if isinstance(key, ec.EllipticCurvePrivateKey) and curve_name(key) != found.curve:
        raise _bad(f"Algorithm '{alg}' needs a {found.curve} key; this key is {curve_name(key)}.")
    size = found.hash.digest_size
    if len(digest) != size:
        raise _bad(
            f"Invalid digest length {len(digest)} for algorithm '{alg}': it signs a "
            f"{size}-byte {found.hash.name.upper()} digest."
        )
    return found


def _rsa_padding(found: _Algorithm) -> padding.AsymmetricPadding:
    if found.pss:
        return padding.PSS(mgf=padding.MGF1(found.hash), salt_length=found.hash.digest_size)
    return padding.PKCS1v15()


def sign(key: Key, alg: object, digest: bytes) -> bytes:
    """Sign ``digest`` (already hashed) with ``alg``; JOSE signature bytes.

    Raises:
        HttpError: 400 for an unknown or unsuitable algorithm or a digest of the wrong length.
    """
    found = _algorithm_for(key, alg, digest)
    prehashed = utils.Prehashed(found.hash)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, _rsa_padding(found), prehashed)
    r, s = utils.decode_dss_signature(key.sign(digest, ec.ECDSA(prehashed)))
    size = (key.curve.key_size + 7) // 8
    return _int_bytes(r, size) + _int_bytes(s, size)


def verify(key: Key, alg: object, digest: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``alg``'s signature of ``digest`` by ``key``.

    Raises:
        HttpError: 400 as :func:`sign` does.
    """
    found = _algorithm_for(key, alg, digest)
    prehashed = utils.Prehashed(found.hash)
    public = key.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, digest, _rsa_padding(found), prehashed)
        else:
            half = len(signature) // 2
            if len(signature) != 2 * ((public.curve.key_size + 7) // 8):
                return False
            r, s = (int.from_bytes(p, "big") for p in (signature[:half], signature[half:]))
            der = utils.encode_dss_signature(r, s)
            public.verify(der, digest, ec.ECDSA(prehashed))
    except InvalidSignature:
        return False
    return True
