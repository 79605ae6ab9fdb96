"""Tests for meshflow.pki: the Istio tools/certs profile, encodings and verification.

RSA 4096 key generation is slow, so one root and one intermediate in the real
profile are made once per module; every other certificate uses 2048-bit keys.
PEM and PKCS#12 files written for openssl live under pytest's tmp_path; the
private keys in them are throwaway test fixtures.

Two independent verifiers check the chains: ``cryptography.x509.verification`` (RFC 5280 path
validation, in this process: the pure tier) and the ``openssl`` CLI. openssl is a process, so
its tests carry the ``emulator`` marker: the lightest tier that may start processes (it needs
nothing built and no server), and the one that already holds Key Vault's certificate tests.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, SignatureAlgorithmOID

from meshflow import pki
from meshflow.pki import CertKeyPair, PkiError
from tests.pki_offline import generate_ingress_leaf, generate_intermediate_ca, generate_root_ca

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
SMALL = 2048
OPENSSL = shutil.which("openssl")
F = TypeVar("F", bound=Callable[..., Any])


def needs_openssl(test: F) -> F:
    """A test that runs the openssl CLI: a process, so in a tier (see the module docstring)."""
    skip = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
    marked: F = pytest.mark.emulator(skip(test))
    return marked


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def root() -> CertKeyPair:
    return generate_root_ca(now=NOW)  # the real profile: RSA 4096


@pytest.fixture(scope="module")
def intermediate(root: CertKeyPair) -> CertKeyPair:
    return generate_intermediate_ca(root, cluster="cluster-a", now=NOW)  # RSA 4096


@pytest.fixture(scope="module")
def small_ca(root: CertKeyPair) -> CertKeyPair:
    # A 2048-bit intermediate for encoding tests: loading a 4096-bit private key
    # costs ~0.25 s because cryptography checks its consistency.
    return generate_intermediate_ca(root, cluster="cluster-b", now=NOW, key_size=SMALL)


@pytest.fixture(scope="module")
def leaf(root: CertKeyPair) -> CertKeyPair:
    return generate_ingress_leaf(root, now=NOW)


@pytest.fixture(scope="module")
def workload(intermediate: CertKeyPair) -> CertKeyPair:
    # An end-entity certificate issued by the intermediate, as istiod would.
    return generate_ingress_leaf(intermediate, now=NOW, host="w.ns.svc.cluster.local", days=1)


@pytest.fixture(scope="module")
def other_root() -> CertKeyPair:
    # Same subject as the real root, different key: the classic "wrong root".
    return generate_root_ca(now=NOW, key_size=SMALL)


@pytest.fixture(scope="module")
def foreign_intermediate(other_root: CertKeyPair) -> CertKeyPair:
    return generate_intermediate_ca(other_root, cluster="cluster-a", now=NOW, key_size=SMALL)


@pytest.fixture(scope="module")
def sub_ca(intermediate: CertKeyPair) -> CertKeyPair:
    # A CA below the pathlen:0 intermediate; our API refuses to make it, so build by hand.
    key = rsa.generate_private_key(public_exponent=65537, key_size=SMALL)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sub CA")]))
        .issuer_name(intermediate.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(intermediate.key.public_key()),
            critical=False,
        )
        .sign(intermediate.key, hashes.SHA256())
    )
    return CertKeyPair(cert=cert, key=key)


@pytest.fixture(scope="module")
def deep_leaf(sub_ca: CertKeyPair) -> CertKeyPair:
    return generate_ingress_leaf(sub_ca, now=NOW, host="deep.example", days=1)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=30, check=False
    )


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def openssl_verify(
    tmp_path: Path,
    target: x509.Certificate,
    *,
    root: x509.Certificate,
    untrusted: tuple[x509.Certificate, ...] = (),
) -> subprocess.CompletedProcess[str]:
    # -x509_strict adds RFC 5280 checks (key identifiers, critical basicConstraints, ...);
    # -attime pins the clock to NOW so the fixed-date fixtures verify on any day.
    args: list[str | Path] = ["verify", "-x509_strict", "-attime", str(int(NOW.timestamp()))]
    args += ["-CAfile", write_pem(tmp_path / "root-cert.pem", root)]
    if untrusted:
        args += ["-untrusted", write_pem(tmp_path / "cert-chain.pem", *untrusted)]
    return openssl(*args, write_pem(tmp_path / "target.pem", target))


# --------------------------------------------------------------------------- profile

CA_USAGE = {
    "digital_signature": True,
    "content_commitment": True,
    "key_encipherment": True,
    "data_encipherment": False,
    "key_agreement": False,
    "key_cert_sign": True,
    "crl_sign": False,
}
LEAF_USAGE = {**CA_USAGE, "content_commitment": False, "key_cert_sign": False}


@dataclass(frozen=True)
class Profile:
    bits: int
    days: int
    subject: list[tuple[x509.ObjectIdentifier, str]]
    ca: bool
    pathlen: int | None
    usage: dict[str, bool]
    sans: list[str] | None
    eku: list[x509.ObjectIdentifier] | None


PROFILE = {
    "root": Profile(
        bits=4096,
        days=3650,
        subject=[(NameOID.ORGANIZATION_NAME, "Istio"), (NameOID.COMMON_NAME, "Root CA")],
        ca=True,
        pathlen=None,
        usage=CA_USAGE,
        sans=None,
        eku=None,
    ),
    "intermediate": Profile(
        bits=4096,
        days=730,
        subject=[
            (NameOID.ORGANIZATION_NAME, "Istio"),
            (NameOID.COMMON_NAME, "Intermediate CA"),
            (NameOID.LOCALITY_NAME, "cluster-a"),
        ],
        ca=True,
        pathlen=0,
        usage=CA_USAGE,
        sans=["istiod.istio-system.svc"],
        eku=None,
    ),
    "leaf": Profile(
        bits=2048,
        days=365,
        subject=[
            (NameOID.COMMON_NAME, "echoserver.echoserver.svc.cluster.local"),
            (NameOID.ORGANIZATION_NAME, "Istio Services"),
        ],
        ca=False,
        pathlen=None,
        usage=LEAF_USAGE,
        sans=["echoserver.echoserver.svc.cluster.local"],
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
    ),
}


E = TypeVar("E", bound=x509.ExtensionType)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.mark.parametrize("which", list(PROFILE))
def test_profile_table(which: str, request: pytest.FixtureRequest, root: CertKeyPair) -> None:
    expected = PROFILE[which]
    pair: CertKeyPair = request.getfixturevalue(which)
    cert = pair.cert

    assert isinstance(pair.key, rsa.RSAPrivateKey)
    assert pair.key.key_size == expected.bits
    assert pair.key.public_key().public_numbers().e == 65537
    assert cert.version is x509.Version.v3
    assert 0 < cert.serial_number < 2**159
    assert cert.not_valid_after_utc - NOW == timedelta(days=expected.days)
    assert NOW - cert.not_valid_before_utc == pki.DEFAULT_BACKDATE == timedelta(hours=1)
    assert [(a.oid, a.value) for a in cert.subject] == expected.subject
    assert cert.issuer == root.cert.subject
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)

    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical is True
    assert (bc.value.ca, bc.value.path_length) == (expected.ca, expected.pathlen)

    ku = ext(cert, x509.KeyUsage)
    assert ku.critical is True
    assert {name: getattr(ku.value, name) for name in CA_USAGE} == expected.usage

    # SKI = SHA-1 of the subjectPublicKey bits (RFC 5280 method 1, openssl's "hash");
    # for RSA those bits are the PKCS#1 RSAPublicKey DER.
    pkcs1 = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.PKCS1
    )
    ski = ext(cert, x509.SubjectKeyIdentifier)
    assert ski.critical is False
    assert ski.value.digest == hashlib.sha1(pkcs1).digest()  # noqa: S324 - that is the definition

    if which == "root":
        assert cert.subject == cert.issuer
        with pytest.raises(x509.ExtensionNotFound):
            ext(cert, x509.AuthorityKeyIdentifier)
    else:
        aki = ext(cert, x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ext(root.cert, x509.SubjectKeyIdentifier).value.digest

    if expected.sans is None:
        with pytest.raises(x509.ExtensionNotFound):
            ext(cert, x509.SubjectAlternativeName)
    else:
        san = ext(cert, x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == expected.sans
        assert len(san) == len(expected.sans)

    if expected.eku is None:
        with pytest.raises(x509.ExtensionNotFound):
            ext(cert, x509.ExtendedKeyUsage)
    else:
        assert list(ext(cert, x509.ExtendedKeyUsage).value) == expected.eku

    assert pair.key_matches()
    cert.verify_directly_issued_by(root.cert)


def new_public_key(bits: int = SMALL) -> rsa.RSAPublicKey:
    """A key made here for the issue_* functions, as Key Vault hands one out in a CSR."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()


def new_root(*, bits: int = SMALL, **kwargs: Any) -> x509.Certificate:
    """:func:`pki.root_ca_certificate` for a key made here, signing in memory."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return pki.root_ca_certificate(key.public_key(), pki.local_signer(key), **kwargs)


def test_intermediate_never_outlives_the_root(root: CertKeyPair) -> None:
    late = NOW + timedelta(days=3000)  # root has 650 days left
    inter = pki.issue_intermediate_ca(root, new_public_key(), cluster="c", now=late, key_size=SMALL)
    assert inter.not_valid_after_utc == root.cert.not_valid_after_utc
    assert inter.not_valid_before_utc == late - timedelta(hours=1)
    leaf = pki.issue_ingress_leaf(
        root, new_public_key(), now=root.cert.not_valid_after_utc - timedelta(days=1)
    )
    assert leaf.not_valid_after_utc == root.cert.not_valid_after_utc


def test_not_before_is_clamped_to_the_issuer(root: CertKeyPair) -> None:
    inter = pki.issue_intermediate_ca(
        root, new_public_key(), cluster="c", now=NOW, key_size=SMALL, backdate=timedelta(days=2)
    )
    assert inter.not_valid_before_utc == root.cert.not_valid_before_utc


def test_custom_host_and_days(root: CertKeyPair) -> None:
    cert = pki.issue_ingress_leaf(root, new_public_key(), now=NOW, host="api.example.com", days=30)
    assert pki.san_strings(cert) == ["DNS:api.example.com"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api.example.com"
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)


def test_now_is_truncated_to_seconds_and_normalised_to_utc(root: CertKeyPair) -> None:
    other_zone = (NOW + timedelta(microseconds=999)).astimezone(
        timezone(timedelta(hours=5, minutes=30))
    )
    cert = pki.issue_ingress_leaf(root, new_public_key(), now=other_zone, days=1)
    assert cert.not_valid_after_utc == NOW + timedelta(days=1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r, i, lf: new_root(created=NOW.replace(tzinfo=None)), "timezone-aware"),
        (lambda r, i, lf: new_root(bits=1024, created=NOW), "at least 2048 bits"),
        (lambda r, i, lf: new_root(created=NOW, days=0), "at least 1 day"),
        (
            lambda r, i, lf: new_root(created=NOW, backdate=timedelta(hours=-1)),
            "must not be negative",
        ),
        # Each public key below is of the expected kind and size (RSA 4096 for an
        # intermediate, RSA 2048 for the leaf), so only the input under test is wrong.
        (
            lambda r, i, lf: pki.issue_intermediate_ca(r, i.cert.public_key(), cluster="", now=NOW),
            "cluster name",
        ),
        (
            lambda r, i, lf: pki.issue_intermediate_ca(
                i, i.cert.public_key(), cluster="x", now=NOW
            ),
            "pathlen:0",
        ),
        (
            lambda r, i, lf: pki.issue_intermediate_ca(
                lf, i.cert.public_key(), cluster="x", now=NOW
            ),
            "is not a CA",
        ),
        (
            lambda r, i, lf: pki.issue_ingress_leaf(
                r, lf.cert.public_key(), now=NOW + timedelta(days=3651)
            ),
            "is not valid at",
        ),
        (
            lambda r, i, lf: pki.issue_ingress_leaf(
                CertKeyPair(cert=r.cert, key=lf.key), lf.cert.public_key(), now=NOW
            ),
            "does not belong",
        ),
        (
            lambda r, i, lf: pki.issue_ingress_leaf(r, lf.cert.public_key(), now=NOW, host="a b"),
            "DNS name",
        ),
    ],
)
def test_issuance_rejects_bad_input(
    make: Callable[[CertKeyPair, CertKeyPair, CertKeyPair], x509.Certificate],
    message: str,
    root: CertKeyPair,
    intermediate: CertKeyPair,
    leaf: CertKeyPair,
) -> None:
    with pytest.raises(PkiError, match=message):
        make(root, intermediate, leaf)


# --------------------------------------------------------------------------- encodings


def test_cert_key_pair_pem_round_trip(small_ca: CertKeyPair) -> None:
    key_pem = small_ca.key_pem()
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    loaded = pki.load_cert_key_pair(small_ca.cert_pem(), key_pem)
    assert loaded.cert == small_ca.cert
    assert isinstance(loaded.key, rsa.RSAPrivateKey)
    assert isinstance(small_ca.key, rsa.RSAPrivateKey)
    assert loaded.key.private_numbers() == small_ca.key.private_numbers()


def test_load_cert_key_pair_accepts_encrypted_and_traditional_keys(leaf: CertKeyPair) -> None:
    encrypted = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    assert pki.load_cert_key_pair(leaf.cert_pem(), encrypted, password=b"pw").key_matches()
    traditional = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pki.load_cert_key_pair(leaf.cert_pem(), traditional).key_matches()


@pytest.mark.parametrize("trusted", [False, True])
def test_load_cert_key_pair_rejects_a_foreign_key(
    intermediate: CertKeyPair, leaf: CertKeyPair, trusted: bool
) -> None:
    with pytest.raises(PkiError, match="does not match certificate") as info:
        pki.load_cert_key_pair(intermediate.cert_pem(), leaf.key_pem(), trusted=trusted)
    assert "PRIVATE KEY" not in str(info.value)


def test_trusted_load_skips_only_the_consistency_check(small_ca: CertKeyPair) -> None:
    pem = pki.pem_bundle(small_ca)  # key then certificate, as Key Vault serves PEM certificates
    loaded = pki.load_cert_key_pair(pem, pem, trusted=True)
    assert isinstance(loaded.key, rsa.RSAPrivateKey)
    assert isinstance(small_ca.key, rsa.RSAPrivateKey)
    assert loaded.key.private_numbers() == small_ca.key.private_numbers()
    assert loaded.cert == small_ca.cert


@pytest.mark.parametrize(
    ("key_pem", "password"),
    [
        (b"not a key", None),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", None),
    ],
)
def test_load_private_key_errors_do_not_echo_input(key_pem: bytes, password: bytes | None) -> None:
    with pytest.raises(PkiError, match="could not read the private key") as info:
        pki.load_private_key(key_pem, password=password)
    assert "AAAA" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_load_private_key_wrong_password(leaf: CertKeyPair) -> None:
    encrypted = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"right"),
    )
    with pytest.raises(PkiError, match="password"):
        pki.load_private_key(encrypted, password=b"wrong")


@pytest.mark.parametrize("garbage", [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nxx\n"])
def test_load_pem_chain_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(PkiError, match="could not read PEM certificates"):
        pki.load_pem_chain(garbage)


def test_cert_chain_pem_is_intermediate_then_root(
    intermediate: CertKeyPair, root: CertKeyPair
) -> None:
    chain = pki.cert_chain_pem(intermediate.cert, root.cert)
    assert chain == intermediate.cert_pem() + root.cert_pem()
    assert pki.load_pem_chain(chain) == [intermediate.cert, root.cert]


def test_cert_chain_pem_refuses_the_wrong_root(
    foreign_intermediate: CertKeyPair, root: CertKeyPair
) -> None:
    with pytest.raises(PkiError, match="was not signed by root"):
        pki.cert_chain_pem(foreign_intermediate.cert, root.cert)


def test_pem_bundle_is_key_then_certificates(small_ca: CertKeyPair, root: CertKeyPair) -> None:
    bundle = pki.pem_bundle(small_ca, chain=[root.cert])
    assert bundle.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert bundle.index(b"PRIVATE KEY") < bundle.index(b"BEGIN CERTIFICATE")
    assert pki.load_pem_chain(bundle) == [small_ca.cert, root.cert]
    assert pki.load_cert_key_pair(bundle, bundle).cert == small_ca.cert


PKCS12_CASES = [
    # Without a password the bags are unencrypted but the file still has a MAC.
    pytest.param(b"", "aes256", ["Key bag"], id="no-password"),
    pytest.param(
        b"s3cret",
        "aes256",
        ["Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 100000, PRF hmacWithSHA256"],
        id="aes256",
    ),
    pytest.param(
        b"s3cret",
        "3des",
        ["Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 100000", "MAC: sha1"],
        id="3des",
    ),
]


@pytest.mark.parametrize(("password", "encryption", "_openssl_says"), PKCS12_CASES)
def test_pkcs12_round_trip(
    password: bytes,
    encryption: pki.Pkcs12Encryption,
    _openssl_says: list[str],
    small_ca: CertKeyPair,
    root: CertKeyPair,
) -> None:
    blob = pki.to_pkcs12(
        small_ca,
        name="cluster-b",
        chain=[root.cert],
        password=password,
        encryption=encryption,
        kdf_rounds=1000,  # speed; the default is checked against openssl below
    )
    contents = pki.from_pkcs12(blob, password)
    assert contents.pair.cert == small_ca.cert
    assert contents.pair.key_matches()
    assert contents.chain == (root.cert,)
    assert contents.name == "cluster-b"


@needs_openssl
@pytest.mark.parametrize(("password", "encryption", "openssl_says"), PKCS12_CASES)
def test_openssl_reads_our_pkcs12(
    password: bytes,
    encryption: pki.Pkcs12Encryption,
    openssl_says: list[str],
    small_ca: CertKeyPair,
    root: CertKeyPair,
    tmp_path: Path,
) -> None:
    path = tmp_path / "ca.p12"
    blob = pki.to_pkcs12(
        small_ca, name="ca", chain=[root.cert], password=password, encryption=encryption
    )
    path.write_bytes(blob)
    passin = f"pass:{password.decode()}"
    result = openssl("pkcs12", "-info", "-nokeys", "-in", path, "-passin", passin)
    assert result.returncode == 0, result.stderr
    assert "MAC: sha" in result.stderr  # integrity-protected even without a password
    for line in openssl_says:
        assert line in result.stderr
    assert "subject=O = Istio, CN = Intermediate CA, L = cluster-b" in result.stdout
    assert "subject=O = Istio, CN = Root CA" in result.stdout


@needs_openssl
def test_from_pkcs12_reads_openssl_empty_password_export(
    small_ca: CertKeyPair, root: CertKeyPair, tmp_path: Path
) -> None:
    # The sample recipe's `openssl pkcs12 -export -passout pass:` (empty, not absent).
    (tmp_path / "ca-key.pem").write_bytes(small_ca.key_pem())
    write_pem(tmp_path / "ca-cert.pem", small_ca.cert)
    write_pem(tmp_path / "root-cert.pem", root.cert)
    out = tmp_path / "ca.p12"
    result = openssl(
        "pkcs12", "-export", "-inkey", tmp_path / "ca-key.pem", "-in", tmp_path / "ca-cert.pem",
        "-certfile", tmp_path / "root-cert.pem", "-name", "ca", "-passout", "pass:", "-out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    contents = pki.from_pkcs12(out.read_bytes())
    assert contents.pair.cert == small_ca.cert
    assert contents.chain == (root.cert,)
    assert contents.name == "ca"


def test_from_pkcs12_errors(small_ca: CertKeyPair) -> None:
    blob = pki.to_pkcs12(small_ca, name="x", password=b"right", kdf_rounds=1000)
    with pytest.raises(PkiError, match="password is wrong"):
        pki.from_pkcs12(blob, b"wrong")
    with pytest.raises(PkiError, match="not PKCS#12"):
        pki.from_pkcs12(b"definitely not pkcs12")
    with pytest.raises(PkiError, match="unknown PKCS#12 encryption"):
        pki.to_pkcs12(small_ca, name="x", password=b"pw", encryption="rc2")  # type: ignore[arg-type]
    with pytest.raises(PkiError, match="kdf_rounds"):
        pki.to_pkcs12(small_ca, name="x", password=b"pw", kdf_rounds=0)


@pytest.mark.parametrize("which", ["intermediate", "small_ca"])
def test_repr_never_shows_key_material(which: str, request: pytest.FixtureRequest) -> None:
    pair: CertKeyPair = request.getfixturevalue(which)
    assert isinstance(pair.key, rsa.RSAPrivateKey)
    numbers = pair.key.private_numbers()
    texts = [repr(pair), str(pair), f"{pair}"]
    if which == "small_ca":  # loading a key back is slow for 4096 bits
        texts.append(repr(pki.from_pkcs12(pki.to_pkcs12(pair, name="x"))))
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert f"RSA-{pair.key.key_size} private key" in text
        for secret in (numbers.d, numbers.p, numbers.q, numbers.public_numbers.n):
            assert str(secret) not in text
            assert format(secret, "x") not in text


@needs_openssl
@pytest.mark.parametrize("which", ["root", "intermediate", "leaf"])
def test_fingerprints_match_openssl(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    cert: x509.Certificate = request.getfixturevalue(which).cert
    pem = write_pem(tmp_path / "c.pem", cert)
    sha256 = openssl("x509", "-in", pem, "-noout", "-fingerprint", "-sha256").stdout
    sha1 = openssl("x509", "-in", pem, "-noout", "-fingerprint", "-sha1").stdout
    assert sha256.strip().split("=", 1)[1] == pki.sha256_fingerprint(cert)
    assert sha1.strip().split("=", 1)[1].replace(":", "") == pki.sha1_thumbprint_hex(cert)


@pytest.mark.parametrize("which", ["root", "intermediate", "leaf"])
def test_fingerprints_are_digests_of_the_der(which: str, request: pytest.FixtureRequest) -> None:
    cert: x509.Certificate = request.getfixturevalue(which).cert
    der = cert.public_bytes(serialization.Encoding.DER)
    assert pki.sha256_fingerprint(cert) == hashlib.sha256(der).digest().hex(":").upper()
    sha1 = hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - the thumbprint is SHA-1
    assert pki.sha1_thumbprint_hex(cert) == sha1


def test_x5t_is_unpadded_base64url_of_sha1(leaf: CertKeyPair) -> None:
    value = pki.x5t(leaf.cert)
    assert len(value) == 27
    assert "=" not in value
    assert "+" not in value
    assert "/" not in value
    raw = base64.urlsafe_b64decode(value + "=")
    assert raw.hex().upper() == pki.sha1_thumbprint_hex(leaf.cert)
    der = leaf.cert.public_bytes(serialization.Encoding.DER)
    assert raw == hashlib.sha1(der).digest()  # noqa: S324 - x5t is defined as SHA-1


# --------------------------------------------------------------------------- openssl verify


@needs_openssl
def test_openssl_verifies_intermediate_with_cert_chain(
    intermediate: CertKeyPair, root: CertKeyPair, tmp_path: Path
) -> None:
    result = openssl_verify(
        tmp_path, intermediate.cert, root=root.cert, untrusted=(intermediate.cert, root.cert)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK")


@needs_openssl
@pytest.mark.parametrize(
    ("target", "untrusted"),
    [("leaf", ()), ("intermediate", ()), ("workload", ("intermediate",))],
)
def test_openssl_verifies_our_chains(
    target: str,
    untrusted: tuple[str, ...],
    request: pytest.FixtureRequest,
    root: CertKeyPair,
    tmp_path: Path,
) -> None:
    cert = request.getfixturevalue(target).cert
    chain = tuple(request.getfixturevalue(name).cert for name in untrusted)
    result = openssl_verify(tmp_path, cert, root=root.cert, untrusted=chain)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_openssl
def test_openssl_rejects_intermediate_from_another_root(
    foreign_intermediate: CertKeyPair, other_root: CertKeyPair, root: CertKeyPair, tmp_path: Path
) -> None:
    result = openssl_verify(
        tmp_path,
        foreign_intermediate.cert,
        root=root.cert,
        untrusted=(foreign_intermediate.cert, other_root.cert),
    )
    assert result.returncode != 0
    assert "self-signed certificate in certificate chain" in result.stdout + result.stderr
    # Without the foreign root, the same-named trusted root does not match its key id.
    result = openssl_verify(tmp_path, foreign_intermediate.cert, root=root.cert)
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


@needs_openssl
def test_openssl_enforces_pathlen_zero(
    intermediate: CertKeyPair,
    sub_ca: CertKeyPair,
    deep_leaf: CertKeyPair,
    root: CertKeyPair,
    tmp_path: Path,
) -> None:
    result = openssl_verify(
        tmp_path, deep_leaf.cert, root=root.cert, untrusted=(intermediate.cert, sub_ca.cert)
    )
    assert result.returncode != 0
    assert "path length constraint exceeded" in result.stdout + result.stderr


# --------------------------------------------------------------------------- cryptography verifier


def server_verifier(trusted: x509.Certificate, host: str) -> verification.ServerVerifier:
    return (
        verification.PolicyBuilder()
        .store(verification.Store([trusted]))
        .time(NOW)
        .build_server_verifier(x509.DNSName(host))
    )


def ca_verifier(trusted: x509.Certificate) -> verification.ClientVerifier:
    # The targets here are CA certificates, which the Web PKI's end-entity profile refuses
    # ("basicConstraints.cA must not be asserted in an EE certificate"), so the target's own
    # extensions are not judged; every issuer in the path still gets the Web PKI's CA profile,
    # and the path RFC 5280's checks (signatures, names, validity, pathlen).
    return (
        verification.PolicyBuilder()
        .store(verification.Store([trusted]))
        .time(NOW)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )


@pytest.mark.parametrize(
    ("target", "untrusted", "path"),
    [
        ("intermediate", (), ("intermediate", "root")),
        ("intermediate", ("intermediate", "root"), ("intermediate", "root")),  # cert-chain.pem
        ("leaf", (), ("leaf", "root")),
        ("workload", ("intermediate",), ("workload", "intermediate", "root")),
    ],
)
def test_cryptography_verifies_our_chains(
    target: str,
    untrusted: tuple[str, ...],
    path: tuple[str, ...],
    request: pytest.FixtureRequest,
    root: CertKeyPair,
) -> None:
    def cert(name: str) -> x509.Certificate:
        found: x509.Certificate = request.getfixturevalue(name).cert
        return found

    verified = ca_verifier(root.cert).verify(cert(target), [cert(n) for n in untrusted])
    assert verified.chain == [cert(n) for n in path]


def test_cryptography_rejects_intermediate_from_another_root(
    foreign_intermediate: CertKeyPair, other_root: CertKeyPair, root: CertKeyPair
) -> None:
    verifier = ca_verifier(root.cert)
    with pytest.raises(verification.VerificationError):
        verifier.verify(foreign_intermediate.cert, [foreign_intermediate.cert, other_root.cert])
    # Without the foreign root: the same-named trusted root's key did not sign it.
    with pytest.raises(verification.VerificationError, match="signature does not match"):
        verifier.verify(foreign_intermediate.cert, [])


def test_cryptography_enforces_pathlen_zero(
    intermediate: CertKeyPair, sub_ca: CertKeyPair, deep_leaf: CertKeyPair, root: CertKeyPair
) -> None:
    with pytest.raises(verification.VerificationError, match="path length constraint violated"):
        ca_verifier(root.cert).verify(deep_leaf.cert, [intermediate.cert, sub_ca.cert])


def test_cryptography_server_verifier_accepts_the_ingress_leaf(
    leaf: CertKeyPair, root: CertKeyPair
) -> None:
    chain = server_verifier(root.cert, pki.ECHOSERVER_HOST).verify(leaf.cert, [])
    assert chain == [leaf.cert, root.cert]


@pytest.mark.parametrize(
    ("trusted", "host"),
    [("other_root", pki.ECHOSERVER_HOST), ("root", "other.echoserver.svc.cluster.local")],
)
def test_cryptography_server_verifier_rejects_wrong_root_or_host(
    trusted: str, host: str, leaf: CertKeyPair, request: pytest.FixtureRequest
) -> None:
    verifier = server_verifier(request.getfixturevalue(trusted).cert, host)
    with pytest.raises(verification.VerificationError):
        verifier.verify(leaf.cert, [])


# --------------------------------------------------------------------------- verify_chain

CHAIN_CASES = [
    pytest.param("intermediate", (), ("root",), None, 2, id="intermediate-to-root"),
    pytest.param(
        "intermediate", ("intermediate", "root"), ("root",), None, 2, id="with-cert-chain.pem"
    ),
    pytest.param("leaf", (), ("root",), None, 2, id="ingress-leaf"),
    pytest.param("workload", ("intermediate",), ("root",), None, 3, id="workload"),
    pytest.param("root", (), ("root",), None, 1, id="root-itself"),
    pytest.param("intermediate", (), ("other_root", "root"), None, 2, id="two-roots"),
    pytest.param("workload", (), ("root",), "no certificate in the chain", 1, id="missing-link"),
    pytest.param(
        "foreign_intermediate", (), ("root",), "signed by a different key", 1, id="wrong-root"
    ),
    pytest.param(
        "foreign_intermediate",
        ("other_root",),
        ("root",),
        "not a trusted root",
        2,
        id="untrusted-root-in-chain",
    ),
    pytest.param(
        "deep_leaf",
        ("sub_ca", "intermediate"),
        ("root",),
        "path length constraint violated",
        2,
        id="pathlen-0",
    ),
    pytest.param("intermediate", (), (), "no trusted root", 1, id="no-roots"),
]


@pytest.mark.parametrize(("target", "chain", "roots", "error", "path_len"), CHAIN_CASES)
def test_verify_chain(
    target: str,
    chain: tuple[str, ...],
    roots: tuple[str, ...],
    error: str | None,
    path_len: int,
    request: pytest.FixtureRequest,
) -> None:
    def certs(names: tuple[str, ...]) -> list[x509.Certificate]:
        return [request.getfixturevalue(name).cert for name in names]

    result = pki.verify_chain(request.getfixturevalue(target).cert, certs(chain), certs(roots), NOW)
    if error is None:
        assert result.ok, result.error
        assert result.error is None
    else:
        assert not result.ok
        assert result.error is not None
        assert error in result.error
    assert len(result.path) == path_len


def test_verify_chain_names_the_wrong_root_by_key_id(
    foreign_intermediate: CertKeyPair, root: CertKeyPair, other_root: CertKeyPair
) -> None:
    error = pki.verify_chain(foreign_intermediate.cert, [], [root.cert], NOW).error
    assert error is not None
    other_ski = ext(other_root.cert, x509.SubjectKeyIdentifier).value.digest.hex(":")
    root_ski = ext(root.cert, x509.SubjectKeyIdentifier).value.digest.hex(":")
    assert other_ski in error
    assert root_ski in error


@pytest.mark.parametrize(
    ("when", "error"),
    [
        (NOW + timedelta(days=2), "'O=Istio Services,CN=w.ns.svc.cluster.local' expired at"),
        (NOW - timedelta(hours=2), "is not yet valid"),
        (NOW + timedelta(days=731), "expired at"),
    ],
)
def test_verify_chain_checks_validity_of_every_link(
    when: datetime, error: str, workload: CertKeyPair, intermediate: CertKeyPair, root: CertKeyPair
) -> None:
    result = pki.verify_chain(workload.cert, [intermediate.cert], [root.cert], when)
    assert not result.ok
    assert result.error is not None
    assert error in result.error


@pytest.mark.parametrize(
    ("child", "issuer", "expected"),
    [
        ("intermediate", "root", True),
        ("leaf", "root", True),
        ("workload", "intermediate", True),
        ("root", "root", True),
        ("foreign_intermediate", "root", False),
        ("workload", "root", False),
        ("intermediate", "leaf", False),
    ],
)
def test_signed_by(child: str, issuer: str, expected: bool, request: pytest.FixtureRequest) -> None:
    child_cert = request.getfixturevalue(child).cert
    issuer_cert = request.getfixturevalue(issuer).cert
    assert pki.signed_by(child_cert, issuer_cert) is expected
    if expected:
        pki.verify_signed_by(child_cert, issuer_cert)
    else:
        with pytest.raises(PkiError, match="reissue"):
            pki.verify_signed_by(child_cert, issuer_cert)


def test_a_leaf_cannot_act_as_issuer(leaf: CertKeyPair) -> None:
    # Matching names and a valid signature, but the "issuer" is not a CA. The
    # issue_* functions refuse to do this, so forge the child by hand.
    key = rsa.generate_private_key(public_exponent=65537, key_size=SMALL)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "victim")]))
        .issuer_name(leaf.cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(leaf.key, hashes.SHA256())
    )
    problem = pki.issuer_problem(forged, leaf.cert)
    assert problem is not None
    assert "is not a CA" in problem
    assert not pki.signed_by(forged, leaf.cert)
    result = pki.verify_chain(forged, [], [leaf.cert], NOW)
    assert not result.ok
    assert "is not a CA" in (result.error or "")


# --------------------------------------------------------------------------- inspect / validate


def test_inspect_intermediate_report(intermediate: CertKeyPair, root: CertKeyPair) -> None:
    chain = pki.load_pem_chain(pki.cert_chain_pem(intermediate.cert, root.cert))
    report = pki.inspect_bundle(
        intermediate.cert,
        now=NOW,
        key=intermediate.key,
        chain=chain,
        roots=[root.cert],
        expect_ca=True,
        expect_pathlen=0,
        expect_sans=["istiod.istio-system.svc"],
    )
    assert report.subject == "L=cluster-a,CN=Intermediate CA,O=Istio"
    assert report.issuer == "CN=Root CA,O=Istio"
    assert report.serial == intermediate.cert.serial_number
    assert report.not_before == NOW - timedelta(hours=1)
    assert report.not_after == NOW + timedelta(days=730)
    assert report.days_left == 730
    assert report.is_ca is True
    assert report.path_length == 0
    assert report.sans == ["DNS:istiod.istio-system.svc"]
    assert report.key_usage == [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "key_cert_sign",
    ]
    assert report.key_type == "RSA-4096"
    assert report.signature_hash == "sha256"
    assert report.sha256_fingerprint == pki.sha256_fingerprint(intermediate.cert)
    assert report.key_matches is True
    assert report.chain_ok is True
    assert report.chain_error is None
    assert report.problems == []
    assert report.ok
    # Without the key or the chain, the root alone is enough to vouch for it.
    assert pki.inspect_bundle(intermediate.cert, now=NOW, roots=[root.cert]).problems == []


@pytest.mark.parametrize(
    ("offset", "days_left", "problem"),
    [
        (timedelta(0), 730, None),
        (timedelta(days=10, seconds=1), 719, None),
        (timedelta(days=729, hours=23, minutes=59, seconds=59), 0, None),
        (timedelta(days=730), 0, None),
        (timedelta(days=730, seconds=1), -1, "expired at 2028-05-31T12:00:00Z"),
        (timedelta(days=1000), -270, "expired at"),
        (timedelta(hours=-1), 730, None),
        (timedelta(hours=-1, seconds=-1), 730, "not yet valid"),
    ],
)
def test_days_left_and_validity_window(
    offset: timedelta,
    days_left: int,
    problem: str | None,
    intermediate: CertKeyPair,
    root: CertKeyPair,
) -> None:
    when = NOW + offset
    report = pki.inspect_bundle(intermediate.cert, now=when, roots=[root.cert])
    assert report.days_left == days_left == pki.days_left(intermediate.cert, now=when)
    time_problems = [p for p in report.problems if not p.startswith("chain")]
    if problem is None:
        assert report.ok, report.problems
    else:
        assert len(time_problems) == 1
        assert problem in time_problems[0]
        assert not report.chain_ok  # the walk agrees the bundle is unusable then


def test_inspect_lists_every_problem(
    intermediate: CertKeyPair, leaf: CertKeyPair, other_root: CertKeyPair
) -> None:
    report = pki.inspect_bundle(
        intermediate.cert,
        now=NOW,
        key=leaf.key,
        roots=[other_root.cert],
        expect_ca=False,
        expect_pathlen=1,
        expect_sans=["istiod.istio-system.svc", "URI:spiffe://cluster.local/ns/istio-system"],
    )
    assert report.key_matches is False
    assert report.chain_ok is False
    assert report.problems == [
        "private key does not match certificate; pair it with its own key",
        f"chain does not verify to the root: {report.chain_error}",
        "expected an end-entity certificate but it is a CA",
        "pathlen is 0, expected pathlen:1",
        "missing subjectAltName URI:spiffe://cluster.local/ns/istio-system",
    ]
    assert "signed by a different key" in (report.chain_error or "")
    assert not report.ok


@pytest.mark.parametrize(
    ("which", "kwargs", "problem"),
    [
        ("root", {"expect_pathlen": 0}, "pathlen is unlimited, expected pathlen:0"),
        (
            "leaf",
            {"expect_ca": True},
            "expected a CA certificate but basicConstraints is not CA:true",
        ),
        ("leaf", {"expect_sans": ["DNS:other"]}, "missing subjectAltName DNS:other"),
    ],
)
def test_profile_expectations(
    which: str,
    kwargs: dict[str, object],
    problem: str,
    request: pytest.FixtureRequest,
    root: CertKeyPair,
) -> None:
    cert = request.getfixturevalue(which).cert
    report = pki.inspect_bundle(cert, now=NOW, roots=[root.cert], **kwargs)  # type: ignore[arg-type]
    assert report.problems == [problem]


def test_inspect_without_key_or_roots(leaf: CertKeyPair) -> None:
    report = pki.inspect_bundle(leaf.cert, now=NOW)
    assert report.key_matches is None
    assert report.chain_ok is False
    assert report.problems == [
        "chain does not verify to the root: no trusted root was given; pass the root certificate"
    ]


def test_inspect_lists_all_problems_of_a_foreign_bundle_without_key_material(
    foreign_intermediate: CertKeyPair, root: CertKeyPair, leaf: CertKeyPair
) -> None:
    report = pki.inspect_bundle(
        foreign_intermediate.cert, now=NOW, key=leaf.key, roots=[root.cert], expect_pathlen=0
    )
    assert report.subject == "L=cluster-a,CN=Intermediate CA,O=Istio"
    assert not report.ok
    problems = report.problems
    assert len(problems) == 2
    assert problems[0].startswith("private key does not match certificate")
    assert problems[1].startswith("chain does not verify to the root")
    assert all("PRIVATE KEY" not in problem for problem in problems)


def test_naive_now_is_rejected(intermediate: CertKeyPair, root: CertKeyPair) -> None:
    naive = NOW.replace(tzinfo=None)
    with pytest.raises(PkiError, match="timezone-aware"):
        pki.inspect_bundle(intermediate.cert, now=naive, roots=[root.cert])
    with pytest.raises(PkiError, match="timezone-aware"):
        pki.verify_chain(intermediate.cert, [], [root.cert], naive)
    with pytest.raises(PkiError, match="timezone-aware"):
        pki.rotation_due(intermediate.cert, now=naive, threshold_days=1)


# --------------------------------------------------------------------------- rotation


@pytest.mark.parametrize(
    ("remaining", "threshold_days", "due"),
    [
        (timedelta(days=31), 30, False),
        (timedelta(days=30, seconds=1), 30, False),
        (timedelta(days=30), 30, True),
        (timedelta(days=29, hours=23), 30, True),
        (timedelta(0), 30, True),
        (timedelta(days=-5), 30, True),
        (timedelta(seconds=1), 0, False),
        (timedelta(0), 0, True),
        (timedelta(days=700), 730, True),
    ],
)
def test_rotation_due(
    remaining: timedelta, threshold_days: int, due: bool, intermediate: CertKeyPair
) -> None:
    now = intermediate.cert.not_valid_after_utc - remaining
    assert pki.rotation_due(intermediate.cert, now=now, threshold_days=threshold_days) is due


def test_rotation_due_rejects_negative_threshold(intermediate: CertKeyPair) -> None:
    with pytest.raises(PkiError, match="threshold_days"):
        pki.rotation_due(intermediate.cert, now=NOW, threshold_days=-1)


# ------------------------------------------------- intermediates for a key made elsewhere


def test_an_intermediate_is_issued_for_the_public_key_it_is_given(
    root: CertKeyPair, small_ca: CertKeyPair
) -> None:
    # As when Key Vault generated the key and handed out only a CSR.
    cert = pki.issue_intermediate_ca(
        root, small_ca.key.public_key(), cluster="vault-made", now=NOW, key_size=SMALL
    )
    assert cert.public_key() == small_ca.key.public_key()
    assert cert.subject == pki.intermediate_ca_subject("vault-made")
    assert pki.signed_by(cert, root.cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)


@pytest.mark.parametrize(
    ("public_key", "expected"),
    [
        (
            ec.generate_private_key(ec.SECP256R1()).public_key(),
            "must be RSA 4096; got EC 256",
        ),
        (rsa.generate_private_key(65537, SMALL).public_key(), "must be RSA 4096; got RSA 2048"),
    ],
)
def test_an_intermediate_key_of_the_wrong_kind_is_refused(
    root: CertKeyPair, public_key: object, expected: str
) -> None:
    with pytest.raises(PkiError, match=expected):
        pki.issue_intermediate_ca(root, public_key, cluster="c", now=NOW)  # type: ignore[arg-type]
