"""Key Vault certificates (create LRO, import PKCS#12/PEM, backing secrets) with the real SDK."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    KeyType,
    WellKnownIssuerNames,
)
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from sandbox.azure import AzureEmulator
from tests.emulator_fixtures import Sleeps, emulator_credential, new_emulator

pytestmark = pytest.mark.emulator
FAST = {"_polling_interval": 0.01}  # the SDK's private knob; its default waits 5 s between polls


def _self_signed(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _same_key(private: object, cert: x509.Certificate) -> bool:
    assert hasattr(private, "public_key")
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(private.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt))


def test_create_with_default_policy(
    emulator: AzureEmulator, certificate_client: CertificateClient, secret_client: SecretClient
) -> None:
    poller = certificate_client.begin_create_certificate(
        "created-default", CertificatePolicy.get_default(), **FAST
    )
    cert = poller.result()
    pending = [e["status"] for e in emulator.requests_log() if e["path"].endswith("/pending")]
    assert pending == [200, 200]  # inProgress, then completed
    assert cert.cer is not None
    assert cert.properties.x509_thumbprint is not None
    parsed = x509.load_der_x509_certificate(cert.cer)
    assert parsed.subject.rfc4514_string() == "CN=DefaultPolicy"
    assert cert.properties.x509_thumbprint == hashlib.sha1(cert.cer).digest()  # noqa: S324
    assert cert.policy is not None
    assert cert.policy.issuer_name == "Self"
    assert cert.policy.key_type == KeyType.rsa
    assert cert.policy.key_size == 2048
    assert cert.key_id == f"{emulator.url}/keys/created-default/{cert.properties.version}"
    secret = secret_client.get_secret("created-default", cert.properties.version)
    assert secret.properties.managed
    assert secret.properties.content_type == "application/x-pkcs12"
    key, leaf, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value or ""), None)
    assert leaf is not None
    assert leaf.fingerprint(hashes.SHA256()) == parsed.fingerprint(hashes.SHA256())
    assert _same_key(key, parsed)


def test_create_with_custom_policy_pem(
    certificate_client: CertificateClient, secret_client: SecretClient
) -> None:
    policy = CertificatePolicy(
        WellKnownIssuerNames.self,
        subject="CN=mesh.example, O=Meshflow",
        san_dns_names=["mesh.example", "*.mesh.example"],
        key_type=KeyType.ec,
        key_curve_name="P-256",
        validity_in_months=6,
        content_type=CertificateContentType.pem,
    )
    cert = certificate_client.begin_create_certificate("created-pem", policy, **FAST).result()
    parsed = x509.load_der_x509_certificate(cert.cer or b"")
    assert parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mesh.example"
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mesh.example", "*.mesh.example"]
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert dt.timedelta(days=180) <= lifetime <= dt.timedelta(days=186)
    pem = secret_client.get_secret("created-pem").value or ""
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert "BEGIN CERTIFICATE" in pem
    key = serialization.load_pem_private_key(pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert _same_key(key, parsed)
    got = certificate_client.get_certificate_policy("created-pem")
    assert got.subject == "CN=mesh.example, O=Meshflow"
    assert got.content_type == "application/x-pem-file"


def test_import_pkcs12_with_password_and_versions(
    emulator: AzureEmulator, certificate_client: CertificateClient, secret_client: SecretClient
) -> None:
    key, leaf = _self_signed("imported.example")
    pfx = pkcs12.serialize_key_and_certificates(
        b"x", key, leaf, None, serialization.BestAvailableEncryption(b"pw")
    )
    first = certificate_client.import_certificate("imported", pfx, password="pw")
    assert first.cer == leaf.public_bytes(serialization.Encoding.DER)
    assert first.policy is not None
    assert first.policy.issuer_name == "Unknown"
    assert first.properties.expires_on == leaf.not_valid_after_utc
    second = certificate_client.import_certificate("imported", pfx, password="pw")
    latest = certificate_client.get_certificate("imported")
    assert latest.properties.version == second.properties.version
    by_version = certificate_client.get_certificate_version(
        "imported", first.properties.version or ""
    )
    assert by_version.id == first.id
    versions = {
        p.version for p in certificate_client.list_properties_of_certificate_versions("imported")
    }
    assert versions == {first.properties.version, second.properties.version}
    secret = secret_client.get_secret("imported", first.properties.version)
    _, again, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value or ""), None)
    assert again == leaf


def test_import_pem(certificate_client: CertificateClient, secret_client: SecretClient) -> None:
    key, leaf = _self_signed("pem.example")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + leaf.public_bytes(serialization.Encoding.PEM)
    policy = CertificatePolicy(
        WellKnownIssuerNames.unknown, content_type=CertificateContentType.pem
    )
    cert = certificate_client.import_certificate("imported-pem", pem, policy=policy)
    assert cert.cer == leaf.public_bytes(serialization.Encoding.DER)
    assert secret_client.get_secret("imported-pem").value == pem.decode()


def test_bad_pkcs12_is_400(certificate_client: CertificateClient) -> None:
    with pytest.raises(HttpResponseError) as err:
        certificate_client.import_certificate("broken", b"not a pfx")
    assert err.value.status_code == 400
    assert err.value.error is not None
    assert err.value.error.code == "BadParameter"
    with pytest.raises(ResourceNotFoundError):
        certificate_client.get_certificate("broken")


def test_delete_and_purge_certificate(
    emulator: AzureEmulator, certificate_client: CertificateClient, secret_client: SecretClient
) -> None:
    key, leaf = _self_signed("gone.example")
    pfx = pkcs12.serialize_key_and_certificates(None, key, leaf, None, serialization.NoEncryption())
    certificate_client.import_certificate("deleted-cert", pfx)
    poller = certificate_client.begin_delete_certificate("deleted-cert")
    poller.wait()
    assert poller.result().recovery_id == f"{emulator.url}/deletedcertificates/deleted-cert"
    assert certificate_client.get_deleted_certificate("deleted-cert").name == "deleted-cert"
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_secret("deleted-cert")
    certificate_client.purge_deleted_certificate("deleted-cert")
    with pytest.raises(ResourceNotFoundError):
        certificate_client.get_deleted_certificate("deleted-cert")


def test_admin_drop_certificate(
    emulator: AzureEmulator, certificate_client: CertificateClient
) -> None:
    key, leaf = _self_signed("drop.example")
    pfx = pkcs12.serialize_key_and_certificates(None, key, leaf, None, serialization.NoEncryption())
    certificate_client.import_certificate("dropped-cert", pfx)
    assert emulator.drop_certificate("dropped-cert")
    with pytest.raises(ResourceNotFoundError):
        certificate_client.get_certificate("dropped-cert")


def test_pending_polls_zero_needs_no_client_tuning(tmp_path: Path, sleeps: Sleeps) -> None:
    with new_emulator(tmp_path, pending_polls=0) as emu:
        ca = str(emu.ca_bundle)
        client = CertificateClient(emu.url, emulator_credential(emu), connection_verify=ca)
        cert = client.begin_create_certificate("quick", CertificatePolicy.get_default()).result()
        assert cert.properties.version is not None
        calls = [(e["method"], e["path"]) for e in emu.requests_log() if e["status"] != 401]
        client.close()
    # The SDK's first poll (made at once) finds it completed: it never waits its 5 s interval.
    assert [c for c in calls if "/certificates/" in c[1]] == [
        ("POST", "/certificates/quick/create"),
        ("GET", "/certificates/quick/pending"),
        ("GET", "/certificates/quick/"),
    ]
    assert sleeps.sdk == []


def _issued_for(csr: x509.CertificateSigningRequest, ca: tuple[object, x509.Certificate]) -> bytes:
    ca_key, ca_cert = ca
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_unknown_issuer_key_stays_in_the_vault_until_merged(
    certificate_client: CertificateClient, secret_client: SecretClient
) -> None:
    policy = CertificatePolicy(
        issuer_name="Unknown", subject="O=Istio, CN=Intermediate CA, L=one",
        key_type=KeyType.rsa, key_size=3072, exportable=True,
    )  # fmt: skip
    op = certificate_client.begin_create_certificate("ca-one", policy).result()
    assert op.status == "inProgress"
    assert op.csr
    csr = x509.load_der_x509_csr(bytes(op.csr))
    assert csr.is_signature_valid
    assert csr.public_key().key_size == 3072
    with pytest.raises(ResourceNotFoundError):
        certificate_client.get_certificate("ca-one")  # nothing issued yet, no secret either
    ca = _self_signed("test CA")
    stranger = _issued_for(
        x509.CertificateSigningRequestBuilder()
        .subject_name(csr.subject)
        .sign(ca[0], hashes.SHA256()),
        ca,
    )
    with pytest.raises(HttpResponseError) as wrong:
        certificate_client.merge_certificate("ca-one", [stranger])
    assert wrong.value.status_code == 400
    assert "doesn't match" in str(wrong.value.message)

    issued = _issued_for(csr, ca)
    ca_der = ca[1].public_bytes(serialization.Encoding.DER)
    merged = certificate_client.merge_certificate("ca-one", [issued, ca_der], tags={"a": "b"})
    assert merged.cer == issued
    assert merged.properties.tags == {"a": "b"}
    pfx = base64.b64decode(secret_client.get_secret("ca-one").value or "")
    key, cert, chain = pkcs12.load_key_and_certificates(pfx, None)
    assert cert is not None
    assert _same_key(key, cert)
    assert [c.subject for c in chain] == [ca[1].subject]
    assert certificate_client.get_certificate_operation("ca-one").status == "completed"
    with pytest.raises(ResourceNotFoundError):
        certificate_client.merge_certificate("ca-one", [issued])  # nothing pending any more


def test_a_pending_creation_can_be_dropped(certificate_client: CertificateClient) -> None:
    policy = CertificatePolicy(issuer_name="Unknown", subject="CN=dropped")
    certificate_client.begin_create_certificate("dropped", policy).result()
    dropped = certificate_client.delete_certificate_operation("dropped")
    assert dropped.status == "inProgress"
    with pytest.raises(ResourceNotFoundError):
        certificate_client.get_certificate_operation("dropped")
    with pytest.raises(ResourceNotFoundError):
        certificate_client.get_certificate("dropped")


def test_creating_again_while_a_creation_is_pending_is_409(
    certificate_client: CertificateClient,
) -> None:
    policy = CertificatePolicy(issuer_name="Unknown", subject="CN=twice")
    first = certificate_client.begin_create_certificate("twice", policy).result()
    with pytest.raises(ResourceExistsError) as conflict:
        certificate_client.begin_create_certificate("twice", policy)
    assert conflict.value.status_code == 409
    assert conflict.value.error is not None
    assert conflict.value.error.code == "Conflict"
    assert "pending" in str(conflict.value.message)
    still = certificate_client.get_certificate_operation("twice")
    assert still.status == "inProgress"
    assert (still.request_id, still.csr) == (first.request_id, first.csr)  # the first one, kept
    certificate_client.delete_certificate_operation("twice")
    again = certificate_client.begin_create_certificate("twice", policy).result()
    assert again.status == "inProgress"
    assert again.request_id != first.request_id


def test_keys_made_ahead_are_each_used_once_and_cost_their_making_time(
    emulator: AzureEmulator, certificate_client: CertificateClient, sleeps: Sleeps
) -> None:
    verify, url = str(emulator.ca_bundle), f"{emulator.url}/_emulator/keys"
    on_demand = emulator.keys_made_on_demand()
    made = requests.post(url, json={"size": 2048, "count": 2}, verify=verify, timeout=60).json()
    assert len(made["made"]) == 2
    assert all(s > 0 for s in made["made"])
    assert made["ready"] == {"2048": 2}
    assert emulator.make_keys(2048, 2) == []  # tops up to the count: nothing missing
    bad = requests.post(url, json={"size": 1024, "count": 1}, verify=verify, timeout=5)
    assert bad.status_code == 400
    not_a_number = requests.post(url, json={"size": "big"}, verify=verify, timeout=5)
    assert not_a_number.status_code == 400

    def created(name: str) -> bytes:
        policy = CertificatePolicy(issuer_name="Unknown", subject=f"CN={name}", key_size=2048)
        op = certificate_client.begin_create_certificate(name, policy).result()
        csr = x509.load_der_x509_csr(bytes(op.csr or b""))
        return csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    first = created("ahead-1")
    assert sleeps.emulator == made["made"][:1]  # the first key made, charged its making time
    second = created("ahead-2")
    assert sleeps.emulator == made["made"]  # then the second, each once
    keys = requests.get(url, verify=verify, timeout=5).json()
    assert keys == {"ready": {}, "made_on_demand": on_demand}  # none made on demand
    third = created("ahead-3")  # none left: made on demand, at no charge
    assert sleeps.emulator == made["made"]
    assert len({first, second, third}) == 3
    assert emulator.keys_made_on_demand() == on_demand + 1
