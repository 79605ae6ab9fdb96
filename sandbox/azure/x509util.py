"""X.509 work behind Key Vault certificates: keys, self-signing, PKCS#12/PEM, policy documents.

Policies are kept as the REST JSON (``key_props``, ``secret_props``, ``x509_props``, ``issuer``,
``lifetime_actions``), with the defaults Key Vault fills in: RSA 2048 exportable keys, PKCS#12
secrets, server+client auth EKUs, 12 months validity, auto-renew at 80 % for created
certificates; imported ones are described from the certificate itself with issuer ``Unknown``.
"""

from __future__ import annotations

import atexit
import base64
import calendar
import datetime as dt
import ipaddress
import multiprocessing
import re
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID, ObjectIdentifier

from .server import HttpError

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
RSA_SIZES = (2048, 3072, 4096)
_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_USAGES = "digitalSignature nonRepudiation keyEncipherment dataEncipherment keyAgreement "
_USAGES += "keyCertSign cRLSign encipherOnly decipherOnly"
_KU_ATTRS = "digital_signature content_commitment key_encipherment data_encipherment "
_KU_ATTRS += "key_agreement key_cert_sign crl_sign encipher_only decipher_only"
_DN_EXTRA = {"E": NameOID.EMAIL_ADDRESS, "S": NameOID.STATE_OR_PROVINCE_NAME}
_SERVER_CLIENT_AUTH = ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)
BAD_PFX = (
    "The specified PKCS#12 X.509 certificate content can not be read. Please check if "
    "certificate is in valid PKCS#12 format."
)
NO_KEY = (
    "Private key is not specified in the specified X.509 PEM certificate content. Please "
    "specify private key in the X.509 PEM certificate content."
)


def bad(message: str) -> HttpError:
    """Key Vault's 400 ``BadParameter``."""
    return HttpError(400, "BadParameter", message)


@dataclass
class CertVersion:
    """A certificate version: leaf, private key and the rest of the chain."""

    cert: x509.Certificate
    key: Key
    chain: list[x509.Certificate] = field(default_factory=list)
    version: str = field(default_factory=lambda: uuid.uuid4().hex)

    @cached_property
    def key_b64(self) -> str:
        """The private key as base64 PKCS#8 DER (for the state file; computed once)."""
        return key_to_b64(self.key)

    @cached_property
    def certs_b64(self) -> list[str]:
        """The leaf, then the rest of the chain, as base64 DER (for the state file)."""
        return [cert_to_b64(c) for c in [self.cert, *self.chain]]

    def secret_value(self, content_type: str) -> str:
        """The backing secret's value: base64 PKCS#12, or PEM key + chain."""
        if content_type == PEM:
            fmt = serialization.PrivateFormat.PKCS8
            pem = serialization.Encoding.PEM
            key = self.key.private_bytes(pem, fmt, serialization.NoEncryption())
            return b"".join(
                [key] + [c.public_bytes(pem) for c in [self.cert, *self.chain]]
            ).decode()
        pfx = pkcs12.serialize_key_and_certificates(
            None, self.key, self.cert, self.chain or None, serialization.NoEncryption()
        )
        return base64.b64encode(pfx).decode()


def parse_subject(subject: str) -> x509.Name:
    """Parse Key Vault's ``CN=a, O=b`` subject syntax (empty means no subject, SANs only)."""
    parts = [p.strip() for p in re.split(r"(?<!\\),", subject) if p.strip()]
    try:
        return x509.Name.from_rfc4514_string(",".join(parts), _DN_EXTRA)
    except ValueError as exc:
        raise bad(f"Invalid subject name: '{subject}'.") from exc


def new_key(props: dict[str, Any]) -> Key:
    """Generate the key a policy's ``key_props`` asks for (in a worker process, see below)."""
    kty = str(props.get("kty") or "RSA").upper()
    if kty in ("EC", "EC-HSM"):
        curve = _CURVES.get(str(props.get("crv") or "P-256"))
        if curve is None:
            raise bad(f"Unsupported curve: {props.get('crv')}")
        return ec.generate_private_key(curve)
    size = int(props.get("key_size") or 2048)
    if kty not in ("RSA", "RSA-HSM") or size not in RSA_SIZES:
        raise bad(f"Unsupported key type or size: {kty} {size}")
    made = _take_made_key(size)
    if made is not None:
        time.sleep(made.seconds)  # as long as making it took, without this machine's CPU
        der = made.der
    else:
        der = _keygen_pool().submit(_generated_rsa_key, size).result()
        _count_on_demand()
    key = _checked_key(der)
    if not isinstance(key, Key):
        raise TypeError("the key worker returned no private key")
    return key


def _key_props(key: Key, requested: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {"exportable": True, "reuse_key": False, **requested}
    if isinstance(key, rsa.RSAPrivateKey):
        return {**props, "kty": props.get("kty") or "RSA", "key_size": key.key_size}
    crv = next(name for name, c in _CURVES.items() if c.name == key.curve.name)
    return {**props, "kty": props.get("kty") or "EC", "key_size": key.curve.key_size, "crv": crv}


def _sans(props: dict[str, Any]) -> list[x509.GeneralName]:
    sans = props.get("sans") or {}
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in sans.get("dns_names") or []]
    names += [x509.RFC822Name(n) for n in sans.get("emails") or []]
    names += [x509.UniformResourceIdentifier(n) for n in sans.get("uris") or []]
    try:
        return names + [
            x509.IPAddress(ipaddress.ip_address(n)) for n in sans.get("ipAddresses") or []
        ]
    except ValueError as exc:
        raise bad(f"Invalid IP address SAN: {exc}") from exc


def _key_usage(names: list[str]) -> x509.KeyUsage:
    if unknown := set(names) - set(_USAGES.split()):
        raise bad(f"Invalid key usage: {sorted(unknown)}")
    flags = [u in names for u in _USAGES.split()]
    if not flags[4]:  # encipherOnly/decipherOnly only exist with keyAgreement
        flags[7] = flags[8] = False
    return x509.KeyUsage(*flags)


def _add_months(when: dt.datetime, months: int) -> dt.datetime:
    year, month = divmod(when.month - 1 + months, 12)
    year, month = when.year + year, month + 1
    return when.replace(
        year=year, month=month, day=min(when.day, calendar.monthrange(year, month)[1])
    )


def self_sign(key: Key, policy: dict[str, Any]) -> x509.Certificate:
    """Issue the self-signed certificate a ``Self`` issuer policy describes."""
    props = policy["x509_props"]
    subject = parse_subject(props["subject"])
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    usages = list(props.get("key_usage") or [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(_add_months(start, int(props.get("validity_months") or 12)))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints("keyCertSign" in usages, None), critical=True)
    )
    if usages:
        builder = builder.add_extension(_key_usage(usages), critical=True)
    if props.get("ekus"):
        ekus = x509.ExtendedKeyUsage([ObjectIdentifier(o) for o in props["ekus"]])
        builder = builder.add_extension(ekus, critical=False)
    if sans := _sans(props):
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def create_policy(requested: dict[str, Any], key: Key) -> dict[str, Any]:
    """The policy Key Vault stores for a create request: the request plus defaults."""
    x509_props = {"subject": "", "ekus": _SERVER_CLIENT_AUTH, **(requested.get("x509_props") or {})}
    if not x509_props["subject"] and not any((x509_props.get("sans") or {}).values()):
        raise bad("The policy must specify a subject or subject alternative names.")
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    default_usage = ["digitalSignature", "keyEncipherment"] if rsa_key else ["digitalSignature"]
    x509_props["key_usage"] = x509_props.get("key_usage") or default_usage
    x509_props["validity_months"] = x509_props.get("validity_months") or 12
    renew = [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}]
    return {
        "key_props": _key_props(key, requested.get("key_props") or {}),
        "secret_props": requested.get("secret_props") or {"contentType": PKCS12},
        "x509_props": x509_props,
        "lifetime_actions": requested.get("lifetime_actions") or renew,
        "issuer": requested.get("issuer") or {"name": "Unknown"},
    }


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _flag(ku: x509.KeyUsage, attr: str) -> bool:
    try:
        return bool(getattr(ku, attr))
    except ValueError:  # encipher_only/decipher_only without key_agreement
        return False


def import_policy(requested: dict[str, Any], cv: CertVersion) -> dict[str, Any]:
    """Describe an imported certificate as Key Vault does (issuer ``Unknown``)."""
    cert = cv.cert
    san, ku, eku = (
        _extension(cert, k)
        for k in (x509.SubjectAlternativeName, x509.KeyUsage, x509.ExtendedKeyUsage)
    )
    pairs = zip(_USAGES.split(), _KU_ATTRS.split(), strict=True)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    notify = [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}]
    return {
        "key_props": _key_props(cv.key, requested.get("key_props") or {}),
        "secret_props": requested.get("secret_props") or {"contentType": PKCS12},
        "x509_props": {
            "subject": cert.subject.rfc4514_string(),
            "sans": {"dns_names": san.get_values_for_type(x509.DNSName)} if san else {},
            "ekus": [o.dotted_string for o in eku] if eku else [],
            "key_usage": [name for name, attr in pairs if ku and _flag(ku, attr)],
            "validity_months": max(1, round(days / 30.44)),
        },
        "lifetime_actions": notify,
        "issuer": {"name": "Unknown"},
    }


# Reading a private key runs OpenSSL's RSA consistency check (primality of the factors): about
# 0.27 s for a 4096-bit key with the GIL held, so in this process one import would stall every
# other request for that long; generating a 4096-bit key takes 0.1-1 s. Key Vault is a
# scaled-out service; the emulator checks and generates keys in worker processes instead and
# reads the key back here without repeating the check.
#
# Key generation and key checks have separate workers: with one pool, an import (its check takes
# 0.27 s) queued behind every key generation requested before it, so on a 4-cluster install the
# root CA's import waited for four RSA-4096 intermediate keys (up to a second each) that Key
# Vault would make independently of it.
_checker: ProcessPoolExecutor | None = None
_keygen: ProcessPoolExecutor | None = None
_pools_lock = threading.Lock()


def _pool(workers: int, current: ProcessPoolExecutor | None) -> ProcessPoolExecutor:
    if current is not None:
        return current
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    atexit.register(pool.shutdown, cancel_futures=True)
    return pool


def _checker_pool() -> ProcessPoolExecutor:
    """Workers that read (and so check) imported keys; made on first use."""
    global _checker
    with _pools_lock:
        _checker = _pool(2, _checker)
        return _checker


def _keygen_pool() -> ProcessPoolExecutor:
    """Workers that generate RSA keys; made on first use."""
    global _keygen
    with _pools_lock:
        _keygen = _pool(2, _keygen)
        return _keygen


def _der(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _checked_pem_key(key_pem: bytes, password: bytes | None) -> bytes:
    """In a worker process: load (and so check) a PEM private key; its PKCS#8 DER."""
    return _der(serialization.load_pem_private_key(key_pem, password))


def _checked_pfx(
    data: bytes, password: bytes | None
) -> tuple[bytes | None, bytes | None, list[bytes]]:
    """In a worker process: parse (and so check) a PKCS#12; its key, certificate and chain."""
    key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    der = serialization.Encoding.DER
    return (
        _der(key) if key is not None else None,
        cert.public_bytes(der) if cert is not None else None,
        [c.public_bytes(der) for c in extra],
    )


def _generated_rsa_key(size: int) -> bytes:
    """In a worker process: a new RSA key (0.1-1 s of CPU for 4096 bits); its PKCS#8 DER."""
    return _der(rsa.generate_private_key(65537, size))


# -- Keys made ahead, for measurements -----------------------------------------------------
#
# Key Vault makes keys on its own hardware: requests made at once do not slow each other, and
# none of that work runs on the machine that runs the flow. The emulator does share that
# machine, so its key generation competes with the flow, the API servers and the Prefect server
# for CPU: on 2 cores, the four RSA-4096 intermediate keys of a 4-cluster install took the whole
# machine for about 1.5 s, slowing every other process, which Azure never does. For
# measurements, keys can be made ahead (``POST /_emulator/keys``, before the timed run): a
# creation then takes a key made ahead, never used before, and waits as long as making that key
# took (its CPU time in the worker), instead of making one. The latency of key generation stays
# in the measurement, with its spread; only its CPU leaves the machine. Keys are kept in memory
# only. Without keys made ahead (the default), keys are made on demand.


@dataclass(frozen=True)
class _MadeKey:
    der: bytes  # PKCS#8, checked by the worker that made it
    seconds: float  # CPU time its generation took


_made_keys: dict[int, list[_MadeKey]] = {}
_made_on_demand = 0


def _count_on_demand() -> None:
    global _made_on_demand
    with _pools_lock:
        _made_on_demand += 1


def keys_made_on_demand() -> int:
    """How many RSA keys requests have made on demand (none waiting ahead) so far."""
    with _pools_lock:
        return _made_on_demand


def _timed_rsa_key(size: int) -> _MadeKey:
    """In a worker process: a new RSA key and the CPU time its generation took."""
    start = time.process_time()
    der = _generated_rsa_key(size)
    return _MadeKey(der, time.process_time() - start)


def _take_made_key(size: int) -> _MadeKey | None:
    with _pools_lock:
        ready = _made_keys.get(size)
        return ready.pop(0) if ready else None


def keys_ready() -> dict[int, int]:
    """How many keys made ahead wait, per RSA key size."""
    with _pools_lock:
        return {size: len(keys) for size, keys in _made_keys.items() if keys}


def make_keys_ahead(size: int, count: int) -> list[float]:
    """Make RSA keys of ``size`` bits until ``count`` wait; the seconds each new one took."""
    if size not in RSA_SIZES or not 0 <= count <= 64:
        raise bad(f"Cannot make {count} RSA keys of {size} bits ahead (sizes {RSA_SIZES}, 0-64).")
    missing = count - keys_ready().get(size, 0)
    futures = [_keygen_pool().submit(_timed_rsa_key, size) for _ in range(missing)]
    made = [f.result() for f in futures]
    with _pools_lock:
        _made_keys.setdefault(size, []).extend(made)
    return [m.seconds for m in made]


def _checked_key(der: bytes) -> Any:
    # Checked by the worker that produced ``der``.
    return serialization.load_der_private_key(der, None, unsafe_skip_rsa_key_validation=True)


def key_to_b64(key: Key) -> str:
    """A private key as base64 PKCS#8 DER (unencrypted: it only goes to the 0600 state file)."""
    return base64.b64encode(_der(key)).decode()


def key_from_b64(value: str) -> Key:
    """Read back :func:`key_to_b64`'s output (a key this emulator made or checked before).

    Raises:
        ValueError: not a private key of a type Key Vault holds.
    """
    key = _checked_key(base64.b64decode(value, validate=True))
    if not isinstance(key, Key):
        raise ValueError(f"not an RSA or EC private key: {type(key).__name__}")
    return key


def cert_to_b64(cert: x509.Certificate) -> str:
    """A certificate as base64 DER."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def cert_from_b64(value: str) -> x509.Certificate:
    """Read back :func:`cert_to_b64`'s output."""
    return x509.load_der_x509_certificate(base64.b64decode(value, validate=True))


def load_pem(value: str, password: str | None) -> CertVersion:
    """Parse a PEM private key + certificate chain (raw PEM text, or its base64)."""
    try:
        raw = value.encode() if "-----BEGIN" in value else base64.b64decode(value, validate=True)
        blocks = [(m[1], m[0]) for m in _PEM_BLOCK.finditer(raw)]
        key_pem = next((b for kind, b in blocks if kind.endswith(b"PRIVATE KEY")), None)
        if key_pem is None:
            raise bad(NO_KEY)
        secret = password.encode() if password else None
        key = _checked_key(_checker_pool().submit(_checked_pem_key, key_pem, secret).result())
        certs = [x509.load_pem_x509_certificate(b) for kind, b in blocks if kind == b"CERTIFICATE"]
    except (ValueError, TypeError) as exc:
        raise bad("The specified PEM X.509 certificate content can not be read.") from exc
    leaf = next((c for c in certs if c.public_key() == key.public_key()), None)
    if leaf is None or not isinstance(key, Key):
        raise bad("The private key does not match any certificate in the content.")
    return CertVersion(leaf, key, [c for c in certs if c is not leaf])


def load_pfx(value: str, password: str | None) -> CertVersion:
    """Parse a base64 PKCS#12 blob."""
    try:
        data = base64.b64decode(value, validate=True)
        secret = password.encode() if password else None
        key_der, cert_der, extra = _checker_pool().submit(_checked_pfx, data, secret).result()
    except (ValueError, TypeError) as exc:
        raise bad(BAD_PFX) from exc
    if cert_der is None or key_der is None:
        raise bad(BAD_PFX)
    key = _checked_key(key_der)
    if not isinstance(key, Key):
        raise bad(BAD_PFX)
    chain = [x509.load_der_x509_certificate(c) for c in extra]
    return CertVersion(x509.load_der_x509_certificate(cert_der), key, chain)
