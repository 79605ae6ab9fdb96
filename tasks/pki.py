"""The mesh PKI in Key Vault (steps 02, 03, 16, 19): ensure, never regenerate a live root.

Objects (names fixed by the SecretProviderClass of step 04 and the App Gateway of step 17):

- certificate ``istio-root-ca``: the root CA **with its key**, exportable, imported as PEM (only
  meshflow reads it, and PEM loads without PKCS#12's slow key check). The seed keeps the root
  key offline, but rotation must sign new intermediates, so meshflow keeps it in Key Vault. Only
  the deployer identity may read it: put it in a separate vault (``root_key_vault_block``) whose
  access policy names the deployer alone, because the clusters' secrets-provider identities get
  *get* on every secret of the mesh vault.
- secret ``root-cert``: the root PEM (public).
- per cluster: certificate ``<cluster>-ca-cert`` (intermediate + key, PKCS#12) and secret
  ``<cluster>-cert-chain`` (intermediate PEM then root PEM). Key Vault generates the key (a
  creation with issuer ``Unknown``); meshflow signs the CSR with the root and merges the
  certificate, so the intermediate's key is never in the flow's memory. The request can start
  before the root exists (:func:`request_intermediate_ca`): the slow key generation then overlaps
  the root step.
- certificate ``frontend-certificate`` (App Gateway listener) and ``echoserver`` (ingress
  backend leaf signed by the Istio root, with a DNS SAN).

Every task is idempotent: it reads first and writes only what is absent, invalid, expiring
within the threshold or signed by another root; a second run writes nothing. Writes go key-first
(the certificate holding the key, then the public secret), so a crash between them is repaired
by the next run instead of leaving a chain that no key backs. Checks read public certificates
only (Key Vault binds each certificate version to the key imported with it); the root's key is
read, and matched to its certificate, only when something must be signed, and whatever it signs
is verified against the root before it is stored. Loading a 4096-bit key costs about 0.25 s of
CPU (OpenSSL's key check), so a converged run reads no key at all. The root and ingress keys
are generated and used in memory inside one task; tasks return
:class:`~tasks.keyvault.ObjectRef` values only. Retries: transient Key Vault errors only (see
:mod:`tasks.retry`).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.certificates import CertificateClient, CertificatePolicy, KeyVaultCertificate
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prefect import task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from blocks import KeyVault, load_block
from meshflow import pki
from meshflow.manifests import (
    INGRESS_CERTIFICATE,
    ROOT_CERT_SECRET,
    ca_certificate_name,
    cert_chain_secret_name,
)
from meshflow.spec import PkiSettings
from tasks.blocking import run_blocking
from tasks.keyvault import (
    PEM_CONTENT_TYPE,
    KeyVaultError,
    ObjectRef,
    cert_ref,
    describe,
    ensure_secret_value,
    get_certificate,
    get_secret_value,
    import_cert_key,
    load_cert_key,
    merge_issued,
    pending_csr,
    public_cert,
    request_certificate,
    vault_clients,
)
from tasks.retry import TRANSIENT_RETRIES

ROOT_CA = "istio-root-ca"
FRONTEND_CERT = "frontend-certificate"
INGRESS_CERT = INGRESS_CERTIFICATE
TAGS = {"managed-by": "meshflow"}


class RootCaError(KeyVaultError):
    """The root CA is missing or unusable; meshflow will not replace it on its own."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class _Root:
    """The mesh root as the signing tasks need it: its certificate now, its key on demand."""

    vault: KeyVault
    stored: KeyVaultCertificate
    cert: x509.Certificate

    def signer(self) -> pki.CertKeyPair:
        """The root with its key, read only when something must be signed (slow to parse)."""
        with vault_clients(self.vault) as (secrets, _):
            pair = load_cert_key(secrets, self.stored)
        if not pair.key_matches():
            raise RootCaError(
                f"root CA {ROOT_CA!r} in Key Vault {self.vault.vault_name!r} does not match its "
                "key; meshflow will not sign with it. Restore the root from backup."
            )
        return pair


def _root_vault(vault: KeyVault, root_key_vault_block: str | None) -> KeyVault:
    return load_block(KeyVault, root_key_vault_block) if root_key_vault_block else vault


def _current_root(vault: KeyVault, root_key_vault_block: str | None) -> _Root:
    root_vault = _root_vault(vault, root_key_vault_block)
    with vault_clients(root_vault) as (_, certs):
        stored = get_certificate(certs, ROOT_CA)
    if stored is None:
        raise RootCaError(
            f"Key Vault {root_vault.vault_name!r} has no root CA {ROOT_CA!r}; "
            "run the ensure-mesh-pki flow (meshflow pki ensure) first"
        )
    return _Root(vault=root_vault, stored=stored, cert=public_cert(stored))


def _issued(issued: pki.CertKeyPair, root: x509.Certificate) -> pki.CertKeyPair:
    """``issued``, once its signature verifies against the published root (sign, then check)."""
    pki.verify_signed_by(issued.cert, root)
    return issued


def _root_problems(root: x509.Certificate, now: dt.datetime) -> list[str]:
    report = pki.inspect_bundle(root, roots=[root], now=now, expect_ca=True)
    return list(report.problems)


def _ensure_root_pem(secrets: SecretClient, vault: KeyVault, root: x509.Certificate) -> ObjectRef:
    try:
        current = secrets.get_secret(ROOT_CERT_SECRET)
    except ResourceNotFoundError:
        current = None
    if current is not None:
        published = pki.load_pem_chain((current.value or "").encode())
        if root in published:  # during a root rotation it holds old and new roots
            ref = ObjectRef(
                kind="secret", name=ROOT_CERT_SECRET, version=str(current.properties.version)
            )
            return describe(ref, root)
        raise RootCaError(
            f"Key Vault {vault.vault_name!r}: secret {ROOT_CERT_SECRET!r} does not contain the "
            f"root CA {ROOT_CA!r} ({root.subject.rfc4514_string()}); refusing to overwrite it. "
            "Check which root the clusters trust before changing either object."
        )
    pem = root.public_bytes(Encoding.PEM).decode()
    ref = ensure_secret_value(
        secrets, ROOT_CERT_SECRET, pem, content_type=PEM_CONTENT_TYPE, tags=TAGS
    )
    return describe(ref, root)


def _existing_mesh_objects(
    secrets: SecretClient, certs: CertificateClient, clusters: Sequence[str]
) -> list[str]:
    # One listing instead of a read per cluster: this runs on every first install.
    wanted = {ca_certificate_name(c) for c in clusters}
    found = [ROOT_CERT_SECRET] if get_secret_value(secrets, ROOT_CERT_SECRET) is not None else []
    found += sorted(  # issued ones only: a creation still pending (no thumbprint) is no trace
        str(p.name)
        for p in certs.list_properties_of_certificates()
        if p.name in wanted and p.x509_thumbprint
    )
    return found


def _ensure_root_ca(
    key_vault_block: str,
    clusters: Sequence[str],
    settings: PkiSettings,
    root_key_vault_block: str | None = None,
) -> list[ObjectRef]:
    """Reuse the mesh root CA, or create it when no trace of a mesh exists yet (step 02-03).

    Raises:
        RootCaError: the root is missing while ``root-cert`` or intermediates exist (a second
            root would split the mesh's trust), or the stored root certificate is invalid.
            Nothing is overwritten in either case.
    """
    vault = load_block(KeyVault, key_vault_block)
    root_vault = _root_vault(vault, root_key_vault_block)
    now = _now()
    with vault_clients(root_vault) as (_, root_certs):
        stored = get_certificate(root_certs, ROOT_CA)
        if stored is None:
            with vault_clients(vault) as (secrets, certs):
                leftovers = _existing_mesh_objects(secrets, certs, clusters)
            if leftovers:
                raise RootCaError(
                    f"Key Vault {root_vault.vault_name!r} has no root CA {ROOT_CA!r}, but the mesh "
                    f"already has {', '.join(leftovers)}. Refusing to create a second root. "
                    f"Recover the deleted root (az keyvault certificate recover --vault-name "
                    f"{root_vault.vault_name} --name {ROOT_CA}) or restore it from backup."
                )
            pair = pki.generate_root_ca(
                now=now, key_size=settings.ca_key_size, days=settings.root_days
            )
            root_ref = import_cert_key(root_certs, ROOT_CA, pair, tags=TAGS, pem=True)
            root = pair.cert
        else:
            # The public certificate suffices here; the key is checked when it signs.
            root = public_cert(stored)
            problems = _root_problems(root, now)
            if problems:
                raise RootCaError(
                    f"root CA {ROOT_CA!r} in Key Vault {root_vault.vault_name!r} is unusable: "
                    f"{'; '.join(problems)}. meshflow will not overwrite it; rotate the root "
                    "with the rotation flow."
                )
            root_ref = cert_ref(stored, written=False)
    with vault_clients(vault) as (secrets, _):
        pem_ref = _ensure_root_pem(secrets, vault, root)
    return [root_ref, pem_ref]


def _ensure_intermediate_ca(
    key_vault_block: str,
    cluster: str,
    settings: PkiSettings,
    root_key_vault_block: str | None = None,
) -> list[ObjectRef]:
    """Ensure ``<cluster>-ca-cert`` and ``<cluster>-cert-chain`` (steps 02-03, per cluster).

    Reissues the intermediate when it is absent, signed by another root, or within
    ``settings.rotation_threshold_days`` of expiry; the old version stays readable in Key Vault.
    """
    vault = load_block(KeyVault, key_vault_block)
    root = _current_root(vault, root_key_vault_block)
    now = _now()
    name = ca_certificate_name(cluster)
    with vault_clients(vault) as (secrets, certs):
        stored = get_certificate(certs, name)
        if stored is not None and not _intermediate_due(stored, root.cert, now, settings):
            ca = public_cert(stored)
            cert = cert_ref(stored, written=False)
        else:
            csr = _intermediate_csr(certs, cluster, settings)
            ca = pki.issue_intermediate_ca(
                root.signer(),
                csr.public_key(),
                cluster=cluster,
                now=now,
                key_size=settings.ca_key_size,
                days=settings.intermediate_days,
            )
            pki.verify_signed_by(ca, root.cert)
            cert = merge_issued(certs, name, [ca], tags=TAGS | {"cluster": cluster})
        chain_ref = ensure_secret_value(
            secrets,
            cert_chain_secret_name(cluster),
            pki.cert_chain_pem(ca, root.cert).decode(),
            content_type=PEM_CONTENT_TYPE,
            tags=TAGS | {"cluster": cluster},
        )
    return [cert, describe(chain_ref, ca)]


def _intermediate_csr(
    certs: CertificateClient, cluster: str, settings: PkiSettings
) -> x509.CertificateSigningRequest:
    """The CSR of a new key for ``cluster``'s intermediate: Key Vault's pending one, or new."""
    name, subject = ca_certificate_name(cluster), pki.intermediate_ca_subject(cluster)
    csr = pending_csr(certs, name, subject, settings.ca_key_size) or request_certificate(
        certs, name, subject, settings.ca_key_size
    )
    if not csr.is_signature_valid:
        raise KeyVaultError(f"the pending creation of {name!r} has a CSR that does not verify")
    return csr


class IntermediateRequest(BaseModel):
    """Whether a new key for ``cluster``'s intermediate CA waits in Key Vault, and why."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    certificate: str
    requested: bool
    reason: str


def _request_intermediate_ca(
    key_vault_block: str,
    cluster: str,
    settings: PkiSettings,
    root_key_vault_block: str | None = None,
) -> IntermediateRequest:
    """Start Key Vault generating ``cluster``'s next intermediate key, if one will be needed.

    Key generation (RSA 4096: up to a second) needs no root, so it can run while the root is
    ensured; :func:`_ensure_intermediate_ca` then signs the waiting CSR, or requests one
    itself. Requests nothing when the intermediate is current, or when the root is missing but
    the intermediate exists (the root step refuses that mesh, see :func:`_ensure_root_ca`).
    """
    vault = load_block(KeyVault, key_vault_block)
    name = ca_certificate_name(cluster)
    with vault_clients(_root_vault(vault, root_key_vault_block)) as (_, root_certs):
        root = get_certificate(root_certs, ROOT_CA)
    with vault_clients(vault) as (_, certs):
        stored = get_certificate(certs, name)
        if root is None:
            reason = "a new mesh: no root CA and no intermediate yet" if stored is None else None
        else:
            reason = _intermediate_due(stored, public_cert(root), _now(), settings)
        if reason is not None:
            _intermediate_csr(certs, cluster, settings)
    return IntermediateRequest(
        cluster=cluster, certificate=name, requested=reason is not None, reason=reason or "current"
    )


def _intermediate_due(
    stored: KeyVaultCertificate | None,
    root: x509.Certificate,
    now: dt.datetime,
    settings: PkiSettings,
) -> str | None:
    """Why a cluster's intermediate needs a new key and certificate; None while it is current."""
    if stored is None:
        return "it does not exist yet"
    return _reissue_reason(public_cert(stored), root, now, settings)


def _reissue_reason(
    cert: x509.Certificate, root: x509.Certificate, now: dt.datetime, settings: PkiSettings
) -> str | None:
    # The key is not read: Key Vault binds each certificate version to the key imported with it.
    if not pki.signed_by(cert, root):
        return "it is not signed by the current root"
    if pki.rotation_due(cert, now=now, threshold_days=settings.rotation_threshold_days):
        return f"it expires within {settings.rotation_threshold_days} days"
    return None


def _ensure_ingress_certificate(
    key_vault_block: str,
    settings: PkiSettings,
    root_key_vault_block: str | None = None,
    host: str = pki.ECHOSERVER_HOST,
) -> ObjectRef:
    """Ensure certificate ``echoserver``: the ingress backend leaf signed by the root (step 19)."""
    vault = load_block(KeyVault, key_vault_block)
    root = _current_root(vault, root_key_vault_block)
    now = _now()
    with vault_clients(vault) as (_, certs):
        stored = get_certificate(certs, INGRESS_CERT)
        if stored is not None:
            current = public_cert(stored)
            fresh = _reissue_reason(current, root.cert, now, settings) is None
            if fresh and f"DNS:{host}" in pki.san_strings(current):
                return cert_ref(stored, written=False)
        leaf = pki.generate_ingress_leaf(
            root.signer(),
            now=now,
            host=host,
            key_size=settings.leaf_key_size,
            days=settings.leaf_days,
        )
        return import_cert_key(certs, INGRESS_CERT, _issued(leaf, root.cert), tags=TAGS)


def _ensure_frontend_certificate(
    key_vault_block: str,
    settings: PkiSettings,
    pfx_secret_block: str | None = None,
) -> ObjectRef:
    """Ensure certificate ``frontend-certificate`` for the App Gateway listener (step 16).

    Without ``pfx_secret_block``: created by Key Vault with its default self-signed policy when
    absent or expiring. With it: the PFX (base64, no password) in that Prefect Secret block is
    imported unless Key Vault already holds the same certificate.
    """
    vault = load_block(KeyVault, key_vault_block)
    now = _now()
    with vault_clients(vault) as (_, certs):
        stored = get_certificate(certs, FRONTEND_CERT)
        if pfx_secret_block:
            blob = base64.b64decode(str(load_block(Secret, pfx_secret_block).get()))
            wanted = pki.from_pkcs12(blob).pair
            if stored is not None and bytes(stored.cer or b"") == wanted.cert.public_bytes(
                Encoding.DER
            ):
                return cert_ref(stored, written=False)
            return import_cert_key(certs, FRONTEND_CERT, wanted, tags=TAGS)
        if stored is not None:
            due = pki.rotation_due(
                public_cert(stored), now=now, threshold_days=settings.rotation_threshold_days
            )
            if not due:
                return cert_ref(stored, written=False)
        poller = certs.begin_create_certificate(
            FRONTEND_CERT, CertificatePolicy.get_default(), tags=TAGS
        )
        poller.result()
        created = get_certificate(certs, FRONTEND_CERT)
        if created is None:
            raise KeyVaultError(f"Key Vault {vault.vault_name!r} did not create {FRONTEND_CERT}")
        return cert_ref(created, written=True)


# -- Prefect tasks: async veneers, so the PKI sub-flow overlaps its Key Vault waits ---------


@task(name="ensure-root-ca", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
async def ensure_root_ca(
    key_vault_block: str,
    clusters: Sequence[str],
    settings: PkiSettings,
    root_key_vault_block: str | None = None,
) -> list[ObjectRef]:
    """Reuse the mesh root CA, or create it when no trace of a mesh exists yet (steps 02-03)."""
    return await run_blocking(
        _ensure_root_ca, key_vault_block, clusters, settings, root_key_vault_block
    )


@task(
    name="ensure-intermediate-ca",
    task_run_name="ensure-intermediate-ca-{cluster}",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
async def ensure_intermediate_ca(
    key_vault_block: str,
    cluster: str,
    settings: PkiSettings,
    root_key_vault_block: str | None = None,
) -> list[ObjectRef]:
    """Ensure ``<cluster>-ca-cert`` and ``<cluster>-cert-chain`` (steps 02-03, per cluster)."""
    return await run_blocking(
        _ensure_intermediate_ca, key_vault_block, cluster, settings, root_key_vault_block
    )


@task(
    name="request-intermediate-ca",
    task_run_name="request-intermediate-ca-{cluster}",
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRIES,
)
async def request_intermediate_ca(
    key_vault_block: str,
    cluster: str,
    settings: PkiSettings,
    root_key_vault_block: str | None = None,
) -> IntermediateRequest:
    """Have Key Vault generate ``cluster``'s next intermediate key now, if one will be needed."""
    return await run_blocking(
        _request_intermediate_ca, key_vault_block, cluster, settings, root_key_vault_block
    )


@task(name="ensure-ingress-certificate", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
async def ensure_ingress_certificate(
    key_vault_block: str,
    settings: PkiSettings,
    root_key_vault_block: str | None = None,
    host: str = pki.ECHOSERVER_HOST,
) -> ObjectRef:
    """Ensure certificate ``echoserver``: the ingress backend leaf signed by the root (step 19)."""
    return await run_blocking(
        _ensure_ingress_certificate, key_vault_block, settings, root_key_vault_block, host
    )


@task(name="ensure-frontend-certificate", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
async def ensure_frontend_certificate(
    key_vault_block: str,
    settings: PkiSettings,
    pfx_secret_block: str | None = None,
) -> ObjectRef:
    """Ensure certificate ``frontend-certificate`` for the App Gateway listener (step 16)."""
    return await run_blocking(
        _ensure_frontend_certificate, key_vault_block, settings, pfx_secret_block
    )
