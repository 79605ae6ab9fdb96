"""The mesh PKI in Key Vault, end to end on the emulator with a real Prefect server.

Tests run in file order on one vault: first run, idempotent re-run, export, reissue, lost root.
"""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from azure.keyvault.certificates import CertificateContentType
from cryptography import x509
from prefect.logging.handlers import APILogHandler

from blocks import KeyVault, load_block
from flows.pki import ensure_mesh_pki
from meshflow import pki
from meshflow.spec import MeshSpec, PkiSettings
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer
from tasks.keyvault import import_cert_key, public_cert, public_pki_files
from tasks.pki import ROOT_CA, ROOT_CERT_OBJECT, ROOT_KEY, RootCaError
from tests.pki_offline import generate_root_ca

WRITE_METHODS = {"PUT", "POST", "PATCH", "DELETE"}
PKCS12_OID = bytes.fromhex("2a864886f70d010c")  # 1.2.840.113549.1.12: PKCS#12 bag types


def _vault_writes(emulator: AzureEmulator) -> list[tuple[str, str]]:
    return [
        (r["method"], r["path"])
        for r in emulator.requests_log()
        if r["method"] in WRITE_METHODS and not r["path"].startswith("/subscriptions")
        and "/oauth2/" not in r["path"] and r["status"] < 400
    ]  # fmt: skip


def _expected_objects(spec: MeshSpec) -> set[str]:
    names = {ROOT_KEY, "root-cert", "echoserver", "frontend-certificate"}
    for c in spec.clusters:
        names |= {f"{c.name}-ca-cert", f"{c.name}-cert-chain"}
    return names


def _scrub(spec: MeshSpec, emulator: AzureEmulator) -> None:
    emulator.drop_key(ROOT_KEY)
    for name in _expected_objects(spec) | {ROOT_CA, ROOT_CERT_OBJECT}:
        emulator.drop_certificate(name)
        emulator.drop_secret(name)


@pytest.fixture(scope="module")
def clean_vault(mesh_env: MeshSpec, azure_emulator: AzureEmulator) -> MeshSpec:
    _scrub(mesh_env, azure_emulator)
    return mesh_env


def test_first_run_creates_exactly_the_documented_objects(
    clean_vault: MeshSpec, emulator: AzureEmulator
) -> None:
    emulator.record_bodies(True)
    try:
        report = asyncio.run(ensure_mesh_pki(clean_vault))
    finally:
        emulator.record_bodies(False)
    # On a fresh vault, no request meshflow made and no answer it read carries a private key:
    # every key is made by Key Vault and stays there (the CSI driver reads them, not meshflow).
    for entry in emulator.requests_log():
        for body in (entry.get("request_body") or "", entry.get("response_body") or ""):
            assert "PRIVATE KEY" not in body, entry["path"]
            for run in _base64_runs(body.encode()):
                decoded = base64.b64decode(run + b"=" * (-len(run) % 4))
                assert PKCS12_OID not in decoded, entry["path"]
                assert b"PRIVATE KEY" not in decoded, entry["path"]
    assert {o.name for o in report.objects} == _expected_objects(clean_vault)
    assert all(o.written for o in report.objects)
    writes = _vault_writes(emulator)
    cluster_certs = [f"{c.name}-ca-cert" for c in clean_vault.clusters]
    # No key is uploaded: the root is a key made by Key Vault, the other keys are generated in
    # the vault too (issuer Unknown): created, then their signed certificates merged.
    assert [p for m, p in writes if p.endswith("/import")] == []
    assert [p for m, p in writes if p.startswith("/keys/") and p.endswith("/create")] == [
        f"/keys/{ROOT_KEY}/create"
    ]
    creates = sorted(p.split("/")[2] for m, p in writes if p.startswith("/certificates/")
                     and p.endswith("/create"))  # fmt: skip
    assert creates == sorted(["frontend-certificate", "echoserver", *cluster_certs])
    merges = sorted(p.split("/")[2] for m, p in writes if p.endswith("/pending/merge"))
    assert merges == sorted(["echoserver", *cluster_certs])
    # Key Vault signs: the root's own certificate, each intermediate and the ingress leaf.
    signs = [p for m, p in writes if p.endswith("/sign")]
    assert len(signs) == 2 + len(cluster_certs)
    assert {p.split("/")[2] for p in signs} == {ROOT_KEY}
    set_secrets = sorted(p.split("/")[2] for m, p in writes if m == "PUT")
    assert set_secrets == sorted(
        ["root-cert", ROOT_CERT_OBJECT, *[f"{c.name}-cert-chain" for c in clean_vault.clusters]]
    )
    vault = load_block(KeyVault, clean_vault.key_vault_block)
    root_key = vault.key_client().get_key(ROOT_KEY)
    assert root_key.properties.exportable is False
    # The CSI driver reads the intermediates and the leaf as PKCS#12 (steps 03 and 20).
    for c in [*cluster_certs, "echoserver"]:
        policy = vault.certificate_client().get_certificate_policy(c)
        assert policy.content_type == CertificateContentType.pkcs12
        assert policy.exportable


def test_second_run_writes_nothing_and_reads_no_private_key(
    clean_vault: MeshSpec, emulator: AzureEmulator
) -> None:
    report = asyncio.run(ensure_mesh_pki(clean_vault))
    assert report.written == []
    assert _vault_writes(emulator) == []
    # A certificate's key is only in its backing secret (same name); checks read certificates.
    keyed = {"echoserver", *(f"{c.name}-ca-cert" for c in clean_vault.clusters)}
    reads = [r["path"] for r in emulator.requests_log() if r["method"] == "GET"]
    assert [p for p in reads if p.split("/")[1:3] in (["secrets", n] for n in keyed)] == []
    assert {f"/certificates/{n}" for n in keyed} <= {p.rstrip("/") for p in reads}


def test_exported_public_files_verify_with_openssl(clean_vault: MeshSpec, tmp_path: Path) -> None:
    files = public_pki_files(clean_vault.key_vault_block, [c.name for c in clean_vault.clusters])
    for rel, text in files.items():
        assert "PRIVATE KEY" not in text
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    for c in clean_vault.clusters:
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", tmp_path / "root-cert.pem",
             "-untrusted", tmp_path / c.name / "cert-chain.pem", tmp_path / c.name / "ca-cert.pem"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        chain = x509.load_pem_x509_certificates((tmp_path / c.name / "cert-chain.pem").read_bytes())
        ca = x509.load_pem_x509_certificate((tmp_path / c.name / "ca-cert.pem").read_bytes())
        root = x509.load_pem_x509_certificate((tmp_path / "root-cert.pem").read_bytes())
        assert chain == [ca, root]  # cert-chain.pem = intermediate then root


def test_intermediate_within_threshold_is_reissued_and_old_version_stays_readable(
    clean_vault: MeshSpec, emulator: AzureEmulator, azure_emulator: AzureEmulator
) -> None:
    certs = load_block(KeyVault, clean_vault.key_vault_block).certificate_client()
    first = clean_vault.clusters[0].name
    old = certs.get_certificate(f"{first}-ca-cert")
    # The intermediates have about 730 days left: due under an 800-day threshold.
    due = clean_vault.model_copy(
        update={
            "pki": PkiSettings(
                ca_key_size=2048, intermediate_days=1000, rotation_threshold_days=800
            )
        }
    )
    report = asyncio.run(ensure_mesh_pki(due))
    reissued = {o.name for o in report.written}
    assert {f"{c.name}-ca-cert" for c in clean_vault.clusters} <= reissued
    assert {f"{c.name}-cert-chain" for c in clean_vault.clusters} <= reissued
    assert not {ROOT_KEY, "root-cert"} & reissued  # the root is never reissued
    new = certs.get_certificate(f"{first}-ca-cert")
    assert new.properties.version != old.properties.version
    kept = certs.get_certificate_version(f"{first}-ca-cert", old.properties.version)
    assert kept.cer == old.cer
    # The reissued intermediates (1000 days) are not due under the usual 30-day threshold.
    assert asyncio.run(ensure_mesh_pki(clean_vault)).written == []


def test_a_deleted_root_fails_loudly_instead_of_creating_a_second_one(
    clean_vault: MeshSpec, emulator: AzureEmulator, azure_emulator: AzureEmulator
) -> None:
    assert azure_emulator.drop_key(ROOT_KEY)
    assert azure_emulator.drop_secret(ROOT_CERT_OBJECT)
    emulator.clear_log()
    with pytest.raises(RootCaError, match="Refusing to create a second root"):
        asyncio.run(ensure_mesh_pki(clean_vault))
    assert _vault_writes(emulator) == []


def test_a_mesh_whose_root_is_an_exportable_pkcs12_certificate_keeps_working(
    clean_vault: MeshSpec, azure_emulator: AzureEmulator
) -> None:
    # Meshes made before vault-only roots keep their root: a certificate with its key, stored
    # as PKCS#12 by the first versions. meshflow signs with it, and never replaces it.
    _scrub(clean_vault, azure_emulator)
    vault = load_block(KeyVault, clean_vault.key_vault_block)
    root = generate_root_ca(now=datetime.now(UTC), key_size=2048)
    import_cert_key(vault.certificate_client(), ROOT_CA, root, tags={})
    policy = vault.certificate_client().get_certificate_policy(ROOT_CA)
    assert policy.content_type == CertificateContentType.pkcs12
    report = asyncio.run(ensure_mesh_pki(clean_vault))
    written = {o.name for o in report.written}
    assert ROOT_CA not in written
    assert ROOT_KEY not in written
    certs = vault.certificate_client()
    for c in clean_vault.clusters:
        assert pki.signed_by(public_cert(certs.get_certificate(f"{c.name}-ca-cert")), root.cert)
    published = vault.secret_client().get_secret("root-cert").value or ""
    assert pki.load_pem_chain(published.encode()) == [root.cert]
    assert asyncio.run(ensure_mesh_pki(clean_vault)).written == []


def _base64_runs(data: bytes) -> list[bytes]:
    return re.findall(rb"[A-Za-z0-9+/]{400,}={0,2}", data)


def test_no_private_key_or_pkcs12_in_prefect_database_results_or_logs(
    prefect_server: PrefectServer,
) -> None:
    APILogHandler().flush()
    home = prefect_server.database.parent
    scanned = [p for p in home.rglob("*") if p.is_file()]
    assert prefect_server.database in scanned
    for path in scanned:
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        assert PKCS12_OID not in data, path
        for run in _base64_runs(data):
            try:
                decoded = base64.b64decode(run + b"=" * (-len(run) % 4))
            except ValueError:
                continue
            assert PKCS12_OID not in decoded, f"PKCS#12 blob in {path}"
            assert b"PRIVATE KEY" not in decoded, path
