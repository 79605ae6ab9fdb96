"""Certificates signed by a key held elsewhere (as Key Vault's sign operation does).

The chains are checked by two independent verifiers: ``cryptography.x509.verification`` here
(pure), and the ``openssl`` CLI, a process, in the ``emulator`` tier (see tests/test_pki.py).
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification

from meshflow import pki

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
SMALL = 2048


@pytest.fixture(scope="module")
def root_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=SMALL)


@pytest.fixture(scope="module")
def root(root_key: rsa.RSAPrivateKey) -> pki.RemoteIssuer:
    signer = pki.local_signer(root_key)
    cert = pki.root_ca_certificate(root_key.public_key(), signer, created=NOW)
    return pki.RemoteIssuer(cert=cert, sign_digest=signer)


def _calls(signer: pki.SignDigest, log: list[bytes]) -> pki.SignDigest:
    def sign(digest: bytes) -> bytes:
        log.append(digest)
        return signer(digest)

    return sign


def test_the_root_of_a_key_is_the_same_certificate_every_time(
    root_key: rsa.RSAPrivateKey, root: pki.RemoteIssuer
) -> None:
    again = pki.root_ca_certificate(root_key.public_key(), pki.local_signer(root_key), created=NOW)
    assert again.public_bytes(Encoding.DER) == root.cert.public_bytes(Encoding.DER)
    later = pki.root_ca_certificate(
        root_key.public_key(), pki.local_signer(root_key), created=NOW + timedelta(seconds=1)
    )
    assert later.serial_number != root.cert.serial_number  # another key version, another root


def test_the_root_has_istios_profile(root: pki.RemoteIssuer) -> None:
    cert = root.cert
    assert cert.subject == pki.root_ca_subject() == cert.issuer
    assert cert.not_valid_before_utc == NOW - pki.DEFAULT_BACKDATE
    assert cert.not_valid_after_utc == NOW + timedelta(days=pki.ROOT_DAYS)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.digital_signature
    assert 0 < cert.serial_number < 2**159
    cert.verify_directly_issued_by(cert)


def test_only_the_tbs_digest_reaches_the_signer(root: pki.RemoteIssuer) -> None:
    digests: list[bytes] = []
    issuer = pki.RemoteIssuer(cert=root.cert, sign_digest=_calls(root.sign_digest, digests))
    key = rsa.generate_private_key(public_exponent=65537, key_size=SMALL)
    cert = pki.issue_intermediate_ca(issuer, key.public_key(), cluster="c1", now=NOW,
                                     key_size=SMALL)  # fmt: skip
    assert len(digests) == 1
    assert len(digests[0]) == 32
    cert.verify_directly_issued_by(root.cert)


def test_a_signer_with_another_key_is_caught_before_anything_is_returned(
    root: pki.RemoteIssuer,
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=SMALL)
    impostor = pki.RemoteIssuer(cert=root.cert, sign_digest=pki.local_signer(other))
    key = rsa.generate_private_key(public_exponent=65537, key_size=SMALL)
    with pytest.raises(pki.PkiError, match="another key"):
        pki.issue_intermediate_ca(impostor, key.public_key(), cluster="c1", now=NOW,
                                  key_size=SMALL)  # fmt: skip
    with pytest.raises(pki.PkiError, match="does not verify"):
        pki.root_ca_certificate(
            rsa.generate_private_key(public_exponent=65537, key_size=SMALL).public_key(),
            root.sign_digest,
            created=NOW,
        )


@pytest.fixture(scope="module")
def chains(root: pki.RemoteIssuer) -> tuple[x509.Certificate, x509.Certificate]:
    """An intermediate CA and an ingress leaf, both signed through ``root``'s signer."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=SMALL)
    intermediate = pki.issue_intermediate_ca(root, ca_key.public_key(), cluster="c1", now=NOW,
                                             key_size=SMALL)  # fmt: skip
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=SMALL)
    return intermediate, pki.issue_ingress_leaf(root, leaf_key.public_key(), now=NOW)


def test_cryptography_accepts_the_chains(
    root: pki.RemoteIssuer, chains: tuple[x509.Certificate, x509.Certificate]
) -> None:
    intermediate, leaf = chains
    builder = verification.PolicyBuilder().store(verification.Store([root.cert]))
    builder = builder.time(NOW + timedelta(days=1))
    # The intermediate is a CA: the Web PKI's end-entity profile would refuse it as a target,
    # so only its issuers get the CA profile; the path gets RFC 5280's checks either way.
    ca_chain = builder.extension_policies(
        ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
        ee_policy=verification.ExtensionPolicy.permit_all(),
    ).build_client_verifier()
    assert ca_chain.verify(intermediate, []).chain == [intermediate, root.cert]
    server = builder.build_server_verifier(x509.DNSName(pki.ECHOSERVER_HOST))
    assert server.verify(leaf, []) == [leaf, root.cert]


@pytest.mark.emulator  # openssl is a process
def test_openssl_accepts_the_chains(
    root: pki.RemoteIssuer, chains: tuple[x509.Certificate, x509.Certificate], tmp_path: Path
) -> None:
    intermediate, leaf = chains
    (tmp_path / "root.pem").write_bytes(root.cert.public_bytes(Encoding.PEM))
    (tmp_path / "ca.pem").write_bytes(intermediate.public_bytes(Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    attime = str(int((NOW + timedelta(days=1)).timestamp()))
    for cert in ("ca.pem", "leaf.pem"):
        result = subprocess.run(
            ["openssl", "verify", "-attime", attime, "-CAfile", "root.pem", cert],
            cwd=tmp_path, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == f"{cert}: OK"


def test_the_leaf_carries_its_dns_name_and_refuses_a_wrong_key(root: pki.RemoteIssuer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=SMALL)
    leaf = pki.issue_ingress_leaf(root, key.public_key(), now=NOW, host="a.example")
    assert pki.san_strings(leaf) == ["DNS:a.example"]
    assert leaf.subject == pki.ingress_leaf_subject("a.example")
    with pytest.raises(pki.PkiError, match="RSA 4096"):
        pki.issue_ingress_leaf(root, key.public_key(), now=NOW, key_size=4096)
    with pytest.raises(pki.PkiError, match="DNS name"):
        pki.ingress_leaf_subject("a b")
