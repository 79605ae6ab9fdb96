"""Intermediate CA keys generated in Key Vault: requested early, signed later, never uploaded.

Runs the task bodies directly against the emulator (the Prefect side is covered by the flow
tests). Small keys: the size is a setting, and these tests are about the protocol.
"""

from __future__ import annotations

import pytest
from azure.keyvault.certificates import CertificateClient
from cryptography import x509

from blocks import KeyVault, load_block
from meshflow import pki
from meshflow.spec import ClusterSpec, MeshSpec, PkiSettings, PkiStore
from sandbox.azure import AzureEmulator
from tasks.keyvault import public_cert
from tasks.pki import (
    ROOT_CA,
    ROOT_CERT_OBJECT,
    ROOT_KEY,
    current_root,
    ensure_intermediate,
    ensure_root,
    request_intermediate,
)
from tests.writes import WRITES

SMALL = PkiSettings(ca_key_size=2048)


def _store(kv: str, settings: PkiSettings = SMALL) -> PkiStore:
    return PkiStore(key_vault_block=kv, settings=settings)


def _c(name: str) -> ClusterSpec:
    return ClusterSpec(name=name, aks_block=name)  # the PKI steps need only the name


def _writes(emulator: AzureEmulator) -> list[tuple[str, str]]:
    return [
        (r["method"], r["path"])
        for r in emulator.requests_log()
        if r["method"] in WRITES and r["path"].startswith(("/certificates", "/secrets"))
        and r["status"] < 400
    ]  # fmt: skip


@pytest.fixture
def vault(mesh_env: MeshSpec, emulator: AzureEmulator) -> tuple[str, CertificateClient]:
    """A vault with a fresh (small) root and no trace of the clusters these tests use."""
    kv = mesh_env.key_vault_block
    mesh = [c.name for c in mesh_env.clusters]
    emulator.drop_key(ROOT_KEY)
    for name in [ROOT_CA, ROOT_CERT_OBJECT, "root-cert",
                 *(f"{c}-{kind}" for c in [*mesh, "gamma", "delta"]
                   for kind in ("ca-cert", "cert-chain"))]:  # fmt: skip
        emulator.drop_certificate(name)
        emulator.drop_secret(name)
    ensure_root(PkiStore(key_vault_block=kv, settings=SMALL), mesh)
    emulator.clear_log()
    return kv, load_block(KeyVault, kv).certificate_client()


def test_the_key_waiting_in_the_vault_is_the_one_signed(
    vault: tuple[str, CertificateClient], emulator: AzureEmulator
) -> None:
    kv, certs = vault
    request = request_intermediate(_store(kv), _c("gamma"))
    assert request.requested
    assert request.reason == "it does not exist yet"
    csr = x509.load_der_x509_csr(bytes(certs.get_certificate_operation("gamma-ca-cert").csr or b""))
    assert _writes(emulator) == [("POST", "/certificates/gamma-ca-cert/create")]

    # Later (in the cluster's sub-flow, or in the next run after a kill): sign and merge.
    emulator.clear_log()
    ensure_intermediate(_store(kv), _c("gamma"))
    assert ("POST", "/certificates/gamma-ca-cert/pending/merge") in _writes(emulator)
    assert not [p for _, p in _writes(emulator) if p.endswith(("/create", "/import"))]
    ca = public_cert(certs.get_certificate("gamma-ca-cert"))
    assert ca.public_key() == csr.public_key()
    root = current_root(_store(kv))
    assert root is not None
    assert pki.signed_by(ca, root.cert)
    assert ca.subject == pki.intermediate_ca_subject("gamma")

    emulator.clear_log()
    again = request_intermediate(_store(kv), _c("gamma"))
    assert not again.requested
    assert again.reason == "current"
    ensure_intermediate(_store(kv), _c("gamma"))
    assert _writes(emulator) == []  # converged: nothing requested, merged or written


def test_a_waiting_key_of_another_size_is_dropped_and_requested_again(
    vault: tuple[str, CertificateClient], emulator: AzureEmulator
) -> None:
    kv, certs = vault
    request_intermediate(_store(kv), _c("delta"))  # e.g. left by a run with older settings
    bigger = PkiSettings(ca_key_size=3072)
    ensure_intermediate(_store(kv, bigger), _c("delta"))
    writes = [w for w in _writes(emulator) if "delta-ca-cert" in w[1]]
    assert writes == [
        ("POST", "/certificates/delta-ca-cert/create"),
        ("DELETE", "/certificates/delta-ca-cert/pending"),
        ("POST", "/certificates/delta-ca-cert/create"),
        ("POST", "/certificates/delta-ca-cert/pending/merge"),
    ]
    key = public_cert(certs.get_certificate("delta-ca-cert")).public_key()
    assert getattr(key, "key_size", None) == 3072


def test_nothing_is_requested_for_a_mesh_whose_root_is_gone(
    vault: tuple[str, CertificateClient], emulator: AzureEmulator
) -> None:
    kv, _ = vault
    ensure_intermediate(_store(kv), _c("gamma"))
    assert emulator.drop_key(ROOT_KEY)
    assert emulator.drop_secret(ROOT_CERT_OBJECT)
    emulator.clear_log()
    request = request_intermediate(_store(kv), _c("gamma"))
    assert not request.requested  # the root step refuses this mesh; nothing is changed first
    assert _writes(emulator) == []
