"""Key Vault keys (create, versions, update, sign/verify, soft delete) with the real SDK clients."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.keyvault.certificates import CertificateClient, CertificatePolicy
from azure.keyvault.keys import KeyClient, KeyOperation, KeyType, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from sandbox.azure import AzureEmulator
from sandbox.azure.jwk import b64url

pytestmark = pytest.mark.emulator
FAST = {"_polling_interval": 0.01}  # the SDK's private knob; its default waits 5 s between polls
EXPIRED = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def crypto() -> Iterator[list[CryptographyClient]]:
    """The ``CryptographyClient`` objects a test made, closed after it."""
    made: list[CryptographyClient] = []
    yield made
    for client in made:
        client.close()


def _crypto(
    made: list[CryptographyClient], key: KeyVaultKey | str, emu: AzureEmulator, cred: object
) -> CryptographyClient:
    client = CryptographyClient(key, cred, connection_verify=str(emu.ca_bundle))  # type: ignore[arg-type]
    made.append(client)
    return client


def _rsa_public(key: KeyVaultKey) -> rsa.RSAPublicKey:
    n, e = (int.from_bytes(bytes(v or b""), "big") for v in (key.key.n, key.key.e))
    return rsa.RSAPublicNumbers(e, n).public_key()


def _token(emu: AzureEmulator, cred: ClientSecretCredential) -> dict[str, str]:
    return {"Authorization": f"Bearer {cred.get_token('https://vault.azure.net/.default').token}"}


def test_create_rsa_hsm_non_exportable_and_get(
    emulator: AzureEmulator, key_client: KeyClient
) -> None:
    emulator.record_bodies(True)
    try:
        key = key_client.create_rsa_key(
            "root-hsm", size=3072, hardware_protected=True, exportable=False, tags={"a": "b"}
        )
    finally:
        emulator.record_bodies(False)
    (create,) = [
        e for e in emulator.requests_log() if e["status"] == 200 and e["path"].startswith("/keys")
    ]
    sent = json.loads(create["request_body"])
    assert sent == {
        "kty": "RSA-HSM", "key_size": 3072, "attributes": {"exportable": False}, "tags": {"a": "b"}
    }  # fmt: skip
    bundle = json.loads(create["response_body"])
    assert set(bundle["key"]) == {"kid", "kty", "key_ops", "n", "e"}  # the public half only
    assert bundle["key"]["e"] == "AQAB"
    assert isinstance(bundle["attributes"]["created"], int)
    assert bundle["attributes"]["recoveryLevel"] == "Recoverable+Purgeable"

    version = key.properties.version or ""
    assert key.id == f"{emulator.url}/keys/root-hsm/{version}"
    assert len(version) == 32
    assert key.key_type == KeyType.rsa_hsm
    assert key.properties.exportable is False
    assert key.properties.tags == {"a": "b"}
    assert _rsa_public(key).key_size == 3072
    assert key.key_operations == ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
    latest = key_client.get_key("root-hsm")
    by_version = key_client.get_key("root-hsm", version)
    assert latest.id == by_version.id == key.id
    assert latest.key.n == key.key.n
    assert latest.properties.managed is None


def test_versions_are_listed_in_creation_order_with_created(key_client: KeyClient) -> None:
    made = [key_client.create_ec_key("versioned-key", curve="P-256") for _ in range(3)]
    listed = list(key_client.list_properties_of_key_versions("versioned-key"))
    assert [p.version for p in listed] == [k.properties.version for k in made]
    created = [p.created_on for p in listed]
    assert all(c is not None for c in created)
    assert created == sorted(created)  # type: ignore[type-var]
    assert all(p.id.endswith(f"/keys/versioned-key/{p.version}") for p in listed)
    assert key_client.get_key("versioned-key").properties.version == made[-1].properties.version
    with pytest.raises(ResourceNotFoundError) as missing:
        key_client.get_key("versioned-key", "0" * 32)
    assert missing.value.error is not None
    assert missing.value.error.code == "KeyNotFound"


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        (SignatureAlgorithm.rs256, hashlib.sha256(b"tbs").digest()),
        (SignatureAlgorithm.rs384, hashlib.sha384(b"tbs").digest()),
        (SignatureAlgorithm.rs512, hashlib.sha512(b"tbs").digest()),
        (SignatureAlgorithm.ps256, hashlib.sha256(b"tbs").digest()),
    ],
)
def test_rsa_signatures_verify_with_cryptography(
    emulator: AzureEmulator,
    key_client: KeyClient,
    azure_credential: ClientSecretCredential,
    crypto: list[CryptographyClient],
    algorithm: SignatureAlgorithm,
    digest: bytes,
) -> None:
    key = key_client.create_rsa_key(f"signer-{algorithm.value.lower()}", size=2048)
    signed = _crypto(crypto, key, emulator, azure_credential).sign(algorithm, digest)
    assert signed.key_id == key.id
    chosen = {"RS256": hashes.SHA256(), "RS384": hashes.SHA384(), "RS512": hashes.SHA512()}
    pre = utils.Prehashed(chosen.get(algorithm.value, hashes.SHA256()))
    pad: padding.AsymmetricPadding = padding.PKCS1v15()
    if algorithm.value.startswith("PS"):
        pad = padding.PSS(padding.MGF1(hashes.SHA256()), salt_length=32)
    _rsa_public(key).verify(signed.signature, digest, pad, pre)  # raises if invalid
    assert [e["path"] for e in emulator.requests_log() if e["path"].endswith("/sign")] == [
        f"/keys/{key.name}/{key.properties.version}/sign"
    ]


def test_ec_signature_is_r_and_s(
    emulator: AzureEmulator,
    key_client: KeyClient,
    azure_credential: ClientSecretCredential,
    crypto: list[CryptographyClient],
) -> None:
    key = key_client.create_ec_key("ec-signer", curve="P-384")
    digest = hashlib.sha384(b"tbs").digest()
    client = _crypto(crypto, key, emulator, azure_credential)
    signature = client.sign(SignatureAlgorithm.es384, digest).signature
    assert len(signature) == 96
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    x, y = (int.from_bytes(bytes(v or b""), "big") for v in (key.key.x, key.key.y))
    public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()
    public.verify(
        utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA384()))
    )
    with pytest.raises(HttpResponseError) as wrong_curve:
        client.sign(SignatureAlgorithm.es256, hashlib.sha256(b"tbs").digest())
    assert wrong_curve.value.status_code == 400


def test_disabled_version_cannot_sign(
    emulator: AzureEmulator,
    key_client: KeyClient,
    azure_credential: ClientSecretCredential,
    crypto: list[CryptographyClient],
) -> None:
    first = key_client.create_rsa_key("rotating", size=2048)
    second = key_client.create_rsa_key("rotating", size=2048)
    props = key_client.update_key_properties(
        "rotating", first.properties.version, enabled=False
    ).properties
    assert props.enabled is False
    assert props.version == first.properties.version
    digest = hashlib.sha256(b"tbs").digest()
    with pytest.raises(HttpResponseError) as refused:
        _crypto(crypto, first, emulator, azure_credential).sign(SignatureAlgorithm.rs256, digest)
    assert refused.value.status_code == 403
    assert refused.value.error is not None
    assert refused.value.error.code == "Forbidden"
    assert refused.value.error.message == "Operation sign is not allowed on a disabled key."
    assert refused.value.error.innererror == {"code": "KeyDisabled"}
    # The other version still signs, and a disabled version can still be read.
    _crypto(crypto, second, emulator, azure_credential).sign(SignatureAlgorithm.rs256, digest)
    assert key_client.get_key("rotating", first.properties.version).properties.enabled is False
    key_client.update_key_properties("rotating", first.properties.version, enabled=True)
    _crypto(crypto, first, emulator, azure_credential).sign(SignatureAlgorithm.rs256, digest)


def test_sign_needs_sign_in_key_ops_and_a_digest_of_the_right_length(
    emulator: AzureEmulator,
    key_client: KeyClient,
    azure_credential: ClientSecretCredential,
    crypto: list[CryptographyClient],
) -> None:
    digest = hashlib.sha256(b"tbs").digest()
    no_sign = key_client.create_rsa_key(
        "encrypt-only", size=2048, key_operations=[KeyOperation.encrypt, KeyOperation.decrypt]
    )
    with pytest.raises(HttpResponseError) as refused:
        _crypto(crypto, no_sign, emulator, azure_credential).sign(SignatureAlgorithm.rs256, digest)
    assert refused.value.status_code == 403
    assert refused.value.error is not None
    assert refused.value.error.message == "Operation sign is not permitted on this key."

    signer = _crypto(crypto, key_client.create_rsa_key("digests", size=2048), emulator,
                     azure_credential)  # fmt: skip
    for alg, wrong in [
        (SignatureAlgorithm.rs256, hashlib.sha384(b"tbs").digest()),
        (SignatureAlgorithm.rs512, digest),
        (SignatureAlgorithm.rs256, b"not hashed at all"),
    ]:
        with pytest.raises(HttpResponseError) as bad:
            signer.sign(alg, wrong)
        assert bad.value.status_code == 400
        assert bad.value.error is not None
        assert bad.value.error.code == "BadParameter"


def test_update_ops_tags_and_validity(key_client: KeyClient) -> None:
    key = key_client.create_rsa_key("updatable-key", size=2048, tags={"a": "1"})
    later = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    props = key_client.update_key_properties(
        "updatable-key", tags={"b": "2"}, key_operations=[KeyOperation.verify], expires_on=later
    ).properties
    assert (props.tags, props.expires_on, props.version) == (
        {"b": "2"}, later, key.properties.version
    )  # fmt: skip
    got = key_client.get_key("updatable-key")
    assert got.key_operations == ["verify"]
    assert got.properties.created_on == key.properties.created_on
    assert got.properties.updated_on is not None
    with pytest.raises(HttpResponseError) as invalid:
        key_client.update_key_properties("updatable-key", key_operations=["fly"])
    assert invalid.value.status_code == 400


def test_verify_route_and_expired_sign_over_rest(
    emulator: AzureEmulator, key_client: KeyClient, azure_credential: ClientSecretCredential
) -> None:
    key = key_client.create_ec_key("rest-verify", curve="P-256")
    base = f"{emulator.url}/keys/rest-verify/{key.properties.version}"
    auth, verify = _token(emulator, azure_credential), str(emulator.ca_bundle)
    params = {"api-version": "2025-07-01"}
    digest = hashlib.sha256(b"tbs").digest()
    signed = requests.post(
        f"{base}/sign", params=params, headers=auth, verify=verify, timeout=10,
        json={"alg": "ES256", "value": b64url(digest)},
    ).json()  # fmt: skip
    assert signed["kid"] == key.id

    def verified(signature: str) -> bool:
        body = {"alg": "ES256", "digest": b64url(digest), "value": signature}
        reply = requests.post(
            f"{base}/verify", params=params, headers=auth, verify=verify, timeout=10, json=body
        )
        assert reply.status_code == 200
        return bool(reply.json()["value"])

    assert verified(signed["value"])
    assert not verified(b64url(bytes(64)))
    key_client.update_key_properties("rest-verify", expires_on=EXPIRED)
    expired = requests.post(
        f"{base}/sign", params=params, headers=auth, verify=verify, timeout=10,
        json={"alg": "ES256", "value": b64url(digest)},
    )  # fmt: skip
    assert expired.status_code == 403
    assert expired.json()["error"]["innererror"] == {"code": "KeyExpired"}
    assert verified(signed["value"])  # verifying stays allowed outside the validity window


def test_no_route_gives_out_private_key_material(
    emulator: AzureEmulator, key_client: KeyClient, azure_credential: ClientSecretCredential
) -> None:
    key = key_client.create_rsa_key("sealed", size=2048)
    auth, verify = _token(emulator, azure_credential), str(emulator.ca_bundle)
    params = {"api-version": "2025-07-01"}
    base = f"{emulator.url}/keys/sealed"
    for method, path in [
        ("POST", "/backup"),
        ("POST", f"/{key.properties.version}/release"),
        ("POST", f"/{key.properties.version}/decrypt"),
        ("PUT", ""),  # import
    ]:
        reply = requests.request(
            method, base + path, params=params, headers=auth, verify=verify, timeout=10, json={}
        )
        assert reply.status_code in (404, 405), (method, path)
    for path in ("", f"/{key.properties.version}", "/versions"):
        reply = requests.get(base + path, params=params, headers=auth, verify=verify, timeout=10)
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(json.dumps(reply.json()).split('"'))


def test_exportable_key_needs_a_release_policy(key_client: KeyClient) -> None:
    with pytest.raises(HttpResponseError) as refused:
        key_client.create_rsa_key("exportable", size=2048, exportable=True)
    assert refused.value.status_code == 400
    assert refused.value.error is not None
    assert refused.value.error.code == "BadParameter"
    for bad in ({"size": 1024}, {"size": 2048, "public_exponent": 3}):
        with pytest.raises(HttpResponseError) as wrong:
            key_client.create_rsa_key("odd", **bad)  # type: ignore[arg-type]
        assert wrong.value.status_code == 400


def test_soft_delete_recover_and_purge(emulator: AzureEmulator, key_client: KeyClient) -> None:
    key = key_client.create_ec_key("deletable-key")
    deleted = key_client.begin_delete_key("deletable-key").result()
    assert deleted.recovery_id == f"{emulator.url}/deletedkeys/deletable-key"
    assert deleted.deleted_date is not None
    assert deleted.scheduled_purge_date is not None
    assert deleted.key.x == key.key.x
    assert key_client.get_deleted_key("deletable-key").id == key.id
    assert "deletable-key" in {k.name for k in key_client.list_deleted_keys()}
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key("deletable-key")
    with pytest.raises(ResourceExistsError):
        key_client.create_ec_key("deletable-key")
    recovered = key_client.begin_recover_deleted_key("deletable-key").result()
    assert recovered.id == key.id
    key_client.begin_delete_key("deletable-key").wait()
    key_client.purge_deleted_key("deletable-key")
    with pytest.raises(ResourceNotFoundError):
        key_client.get_deleted_key("deletable-key")
    assert key_client.create_ec_key("deletable-key").id != key.id


def test_list_keys_is_paged(emulator: AzureEmulator, key_client: KeyClient) -> None:
    for i in range(27):
        key_client.create_ec_key(f"paged-key-{i}")
    listed = {p.name: p for p in key_client.list_properties_of_keys()}
    assert {f"paged-key-{i}" for i in range(27)} <= set(listed)
    assert listed["paged-key-0"].version is None  # a KeyItem names the key, not a version
    pages = [e for e in emulator.requests_log() if e["path"] == "/keys" and e["method"] == "GET"]
    assert len(pages) >= 2


def test_a_certificates_key_is_a_managed_key(
    emulator: AzureEmulator,
    key_client: KeyClient,
    certificate_client: CertificateClient,
    azure_credential: ClientSecretCredential,
    crypto: list[CryptographyClient],
) -> None:
    cert = certificate_client.begin_create_certificate(
        "cert-with-key", CertificatePolicy.get_default(), **FAST
    ).result()
    key = key_client.get_key("cert-with-key")
    assert key.properties.managed is True
    assert key.id == cert.key_id
    leaf = x509.load_der_x509_certificate(bytes(cert.cer or b""))
    assert _rsa_public(key).public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
    assert "cert-with-key" in {p.name for p in key_client.list_properties_of_keys()}
    digest = hashlib.sha256(b"tbs").digest()
    signature = (
        _crypto(crypto, key, emulator, azure_credential)
        .sign(SignatureAlgorithm.rs256, digest)
        .signature
    )
    public = leaf.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    for write in (
        lambda: key_client.create_rsa_key("cert-with-key", size=2048),
        lambda: key_client.update_key_properties("cert-with-key", enabled=False),
        lambda: key_client.begin_delete_key("cert-with-key"),
    ):
        with pytest.raises(HttpResponseError) as refused:
            write()
        assert refused.value.status_code == 403
        assert "managed key" in str(refused.value.message)

    key_client.create_ec_key("key-first")
    with pytest.raises(ResourceExistsError):
        certificate_client.begin_create_certificate(
            "key-first", CertificatePolicy.get_default(), **FAST
        )
    certificate_client.begin_delete_certificate("cert-with-key").wait()
    assert key_client.get_deleted_key("cert-with-key").properties.managed is True
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key("cert-with-key")


def test_rsa_keys_made_ahead_are_used(emulator: AzureEmulator, key_client: KeyClient) -> None:
    emulator.make_keys(2048, 1)
    on_demand = emulator.keys_made_on_demand()
    key_client.create_rsa_key("from-ahead", size=2048)
    assert emulator.keys_ready().get(2048, 0) == 0
    assert emulator.keys_made_on_demand() == on_demand
