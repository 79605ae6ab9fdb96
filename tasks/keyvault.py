"""Azure Key Vault: secrets and certificates of the mesh.

Needs secret get/set (and certificate get/import/create for the PKI tasks) on the vault, through
an access policy or the "Key Vault Secrets Officer" / "Key Vault Certificates Officer" roles.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    KeyType,
    KeyVaultCertificate,
)
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from blocks import KeyVault, load_block
from meshflow import pki
from meshflow.manifests import ROOT_CERT_SECRET, ca_certificate_name, cert_chain_secret_name
from tasks.blocking import run_blocking
from tasks.retry import TRANSIENT_RETRIES

PROBE_SECRET = "meshflow-probe"  # noqa: S105 - a secret name, not a value
PEM_CONTENT_TYPE = "application/x-pem-file"


class KeyVaultError(RuntimeError):
    """A Key Vault operation failed in a way the user must act on."""


class ObjectRef(BaseModel):
    """A reference to a Key Vault object version: what flows pass around instead of its value."""

    model_config = ConfigDict(frozen=True)
    kind: str  # "secret" or "certificate"
    name: str
    version: str
    written: bool = False
    subject: str | None = None
    not_after: dt.datetime | None = None
    thumbprint: str | None = None


def describe(ref: ObjectRef, cert: x509.Certificate) -> ObjectRef:
    """``ref`` with the subject, expiry and thumbprint of the certificate it holds (or starts)."""
    return ref.model_copy(
        update={
            "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc,
            "thumbprint": pki.sha1_thumbprint_hex(cert),
        }
    )


def public_cert(cert: KeyVaultCertificate) -> x509.Certificate:
    """The X.509 certificate of a Key Vault certificate version (public part; no key read)."""
    return x509.load_der_x509_certificate(bytes(cert.cer or b""))


def cert_ref(cert: KeyVaultCertificate, *, written: bool) -> ObjectRef:
    """A reference to a Key Vault certificate version."""
    ref = ObjectRef(
        kind="certificate",
        name=str(cert.name),
        version=str(cert.properties.version if cert.properties else ""),
        written=written,
    )
    return describe(ref, public_cert(cert))


@contextmanager
def vault_clients(vault: KeyVault) -> Iterator[tuple[SecretClient, CertificateClient]]:
    """The vault's (shared) secret and certificate clients; 401/403 made actionable."""
    try:
        yield vault.secret_client(), vault.certificate_client()
    except HttpResponseError as exc:
        if exc.status_code in (401, 403):
            raise KeyVaultError(
                f"Key Vault {vault.vault_name!r} denied the request (HTTP {exc.status_code}); "
                "give the flow's identity secret and certificate get/set/import permissions"
            ) from exc
        raise


def get_certificate(client: CertificateClient, name: str) -> KeyVaultCertificate | None:
    """The latest version of certificate ``name``, or None if there is none."""
    try:
        return client.get_certificate(name)
    except ResourceNotFoundError:
        return None


def get_secret_value(client: SecretClient, name: str) -> str | None:
    """The latest value of secret ``name``, or None if there is none."""
    try:
        return client.get_secret(name).value
    except ResourceNotFoundError:
        return None


def load_cert_key(client: SecretClient, cert: KeyVaultCertificate) -> pki.CertKeyPair:
    """The certificate's private key and certificate, from its backing secret (in memory).

    Raises:
        KeyVaultError: the backing secret is missing or unreadable (e.g. a non-exportable key).
    """
    name = str(cert.name)
    version = str(cert.properties.version if cert.properties else "")
    try:
        secret = client.get_secret(name, version)
    except ResourceNotFoundError as exc:
        raise KeyVaultError(
            f"certificate {name!r} has no readable key (secret {name}/{version} missing); "
            "it must be imported as exportable"
        ) from exc
    value = secret.value or ""
    try:
        if secret.properties.content_type == PEM_CONTENT_TYPE:
            # Keys in the mesh vault are meshflow's own, and what they sign is verified before
            # it is stored (tasks.pki), so the slow RSA consistency check is skipped.
            return pki.load_cert_key_pair(value.encode(), value.encode(), trusted=True)
        return pki.from_pkcs12(base64.b64decode(value)).pair
    except ValueError as exc:
        raise KeyVaultError(f"certificate {name!r}: its key and certificate do not parse") from exc


def import_cert_key(
    client: CertificateClient,
    name: str,
    pair: pki.CertKeyPair,
    *,
    tags: Mapping[str, str],
    pem: bool = False,
) -> ObjectRef:
    """Import ``pair`` as a new version of certificate ``name`` (exportable PKCS#12, or PEM).

    The key travels to Key Vault once, inside the blob, and is not kept. PEM (key then
    certificate, content type ``application/x-pem-file``) is for objects only meshflow reads:
    it loads in microseconds where PKCS#12 costs a full RSA key check.
    """
    key_size = getattr(pair.key, "key_size", None)
    policy = CertificatePolicy(
        issuer_name="Unknown",
        subject=pair.cert.subject.rfc4514_string(),
        content_type=CertificateContentType.pem if pem else CertificateContentType.pkcs12,
        exportable=True,
        key_type=KeyType.rsa,
        key_size=key_size,
        reuse_key=False,
    )
    blob = pki.pem_bundle(pair) if pem else pki.to_pkcs12(pair, name=name)
    imported = client.import_certificate(name, blob, policy=policy, enabled=True, tags=dict(tags))
    return cert_ref(imported, written=True)


def ensure_secret_value(
    client: SecretClient, name: str, value: str, *, content_type: str, tags: Mapping[str, str]
) -> ObjectRef:
    """Set secret ``name`` to ``value`` unless its latest version already holds exactly that.

    Idempotent: an unchanged value writes nothing (no new version).
    """
    try:
        current = client.get_secret(name)
    except ResourceNotFoundError:
        current = None
    if current is not None and current.value == value:
        return ObjectRef(kind="secret", name=name, version=str(current.properties.version))
    written = client.set_secret(name, value, content_type=content_type, tags=dict(tags))
    return ObjectRef(
        kind="secret", name=name, version=str(written.properties.version), written=True
    )


class ProbeResult(BaseModel):
    """Outcome of a write-then-read round trip on the vault."""

    model_config = ConfigDict(frozen=True)
    vault: str
    secret: str
    version: str
    round_trip_ms: float


@task(name="probe-key-vault", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
async def probe_key_vault(key_vault_block: str) -> ProbeResult:
    """Write a random, non-secret nonce to ``meshflow-probe`` and read it back.

    Not idempotent by design: each probe adds a secret version, proving write access.
    """
    return await run_blocking(_probe, key_vault_block)


class VaultFacts(BaseModel):
    """Public facts of the mesh vault that manifests need (SecretProviderClass)."""

    model_config = ConfigDict(frozen=True)
    vault_name: str
    tenant_id: str


@task(name="describe-key-vault", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
async def describe_key_vault(key_vault_block: str) -> VaultFacts:
    """The vault's name and tenant, from its block."""
    vault = await run_blocking(load_block, KeyVault, key_vault_block)
    tenant = vault.tenant_id or vault.credentials.tenant_id
    if not tenant:
        raise KeyVaultError(f"block {key_vault_block!r}: set tenant_id (needed by the CSI driver)")
    return VaultFacts(vault_name=vault.vault_name, tenant_id=tenant)


def _probe(key_vault_block: str) -> ProbeResult:
    vault = load_block(KeyVault, key_vault_block)
    nonce = secrets.token_hex(8)
    start = time.perf_counter()
    with vault_clients(vault) as (client, _):
        written = client.set_secret(
            PROBE_SECRET,
            nonce,
            content_type="text/plain",
            tags={"purpose": "meshflow access probe"},
        )
        read = client.get_secret(PROBE_SECRET, written.properties.version)
    elapsed = (time.perf_counter() - start) * 1000
    if read.value != nonce:
        raise KeyVaultError(f"Key Vault {vault.vault_name!r}: probe read back a different value")
    return ProbeResult(
        vault=vault.vault_name,
        secret=PROBE_SECRET,
        version=str(written.properties.version),
        round_trip_ms=round(elapsed, 1),
    )


@task(name="read-public-pki", **TRANSIENT_RETRIES)
def read_public_pki(key_vault_block: str, clusters: list[str]) -> dict[str, str]:
    """The public PKI files by relative path, for inspection.

    ``root-cert.pem`` and per cluster ``<c>/ca-cert.pem`` and ``<c>/cert-chain.pem``. Read-only;
    certificates only, never a key.
    """
    vault = load_block(KeyVault, key_vault_block)
    files: dict[str, str] = {}
    with vault_clients(vault) as (secrets, certs):
        root = get_secret_value(secrets, ROOT_CERT_SECRET)
        if root is None:
            raise KeyVaultError(
                f"Key Vault {vault.vault_name!r} has no root-cert; run `meshflow pki ensure`"
            )
        files["root-cert.pem"] = root
        for cluster in clusters:
            cert = get_certificate(certs, ca_certificate_name(cluster))
            chain = get_secret_value(secrets, cert_chain_secret_name(cluster))
            if cert is None or chain is None:
                raise KeyVaultError(f"Key Vault {vault.vault_name!r} lacks {cluster}'s CA objects")
            pem = public_cert(cert).public_bytes(Encoding.PEM).decode()
            files[f"{cluster}/ca-cert.pem"] = pem
            files[f"{cluster}/cert-chain.pem"] = chain
    for text in files.values():  # defence in depth: this output goes to disk
        if "PRIVATE KEY" in text:
            raise KeyVaultError("refusing to export: a public PKI object contains a private key")
    return files
