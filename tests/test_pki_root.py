"""The mesh root is a Key Vault key that never leaves the vault; one root, even under races.

Task bodies run directly against the emulator with real SDK clients (the flow tests cover the
Prefect side). Small keys: the size is a setting, and these tests are about the protocol.
"""

from __future__ import annotations

import base64
import contextvars
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from blocks import KeyVault, load_block
from meshflow import pki
from meshflow.manifests import ca_certificate_name, cert_chain_secret_name
from meshflow.spec import ClusterSpec, MeshSpec, PkiSettings, PkiStore
from sandbox.azure import AzureEmulator
from tasks import pki as tpki
from tasks.keyvault import import_cert_key, public_cert
from tests.pki_offline import generate_root_ca

SMALL = PkiSettings(ca_key_size=2048)
CLUSTERS = ("c-one", "c-two")
T = TypeVar("T")


def _scrub(emulator: AzureEmulator) -> None:
    """A vault with no trace of a mesh: no root of either kind, no cluster objects."""
    emulator.drop_key(tpki.ROOT_KEY)
    for name in (tpki.ROOT_CA, tpki.ROOT_CERT_OBJECT, "root-cert", tpki.INGRESS_CERT):
        emulator.drop_certificate(name)
        emulator.drop_secret(name)
    for c in CLUSTERS:
        emulator.drop_certificate(ca_certificate_name(c))
        emulator.drop_secret(cert_chain_secret_name(c))


@pytest.fixture
def fresh(mesh_env: MeshSpec, emulator: AzureEmulator) -> Iterator[str]:
    _scrub(emulator)
    emulator.record_bodies(True)
    yield mesh_env.key_vault_block
    emulator.record_bodies(False)
    _scrub(emulator)


def _store(block: str) -> PkiStore:
    return PkiStore(key_vault_block=block, settings=SMALL)


def _c(name: str) -> ClusterSpec:
    return ClusterSpec(name=name, aks_block=name)  # the PKI steps need only the name


def _vault(block: str) -> KeyVault:
    return load_block(KeyVault, block)


def _published_roots(block: str) -> list[x509.Certificate]:
    value = _vault(block).secret_client().get_secret("root-cert").value or ""
    return pki.load_pem_chain(value.encode())


def _enabled_root_versions(block: str) -> list[str]:
    keys = _vault(block).key_client()
    return [
        str(p.version) for p in keys.list_properties_of_key_versions(tpki.ROOT_KEY) if p.enabled
    ]


def _together(calls: list[Callable[[], T]]) -> list[T]:
    """Run every call at the same moment in its own thread; their results (errors raised)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            results[i] = exc

    # Each thread carries the test's context: Prefect's settings (the API URL) live there.
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(run, i))
        for i in range(len(calls))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_a_new_root_is_a_non_exportable_vault_key_that_signs_its_own_certificate(
    fresh: str, emulator: AzureEmulator
) -> None:
    refs = tpki.ensure_root(_store(fresh), CLUSTERS)
    assert [r.name for r in refs] == [tpki.ROOT_KEY, "root-cert"]
    assert all(r.written for r in refs)
    key = _vault(fresh).key_client().get_key(tpki.ROOT_KEY)
    assert key.properties.exportable is False
    assert key.key_type == "RSA-HSM"
    root = _published_roots(fresh)
    assert len(root) == 1
    assert root[0].subject == pki.root_ca_subject()
    root[0].verify_directly_issued_by(root[0])  # signed by the vault key itself
    # The key signs in the vault: no request or response meshflow made carries key material.
    for entry in emulator.requests_log():
        for body in (entry.get("request_body") or "", entry.get("response_body") or ""):
            assert "PRIVATE KEY" not in body, entry["path"]
            assert '"d":' not in body.replace(" ", ""), entry["path"]  # a JWK's private part
    assert tpki.ensure_root(_store(fresh), CLUSTERS)[0].written is False


def test_what_the_vault_root_signs_verifies_with_openssl(fresh: str, tmp_path: Path) -> None:
    tpki.ensure_root(_store(fresh), CLUSTERS)
    tpki.ensure_intermediate(_store(fresh), _c(CLUSTERS[0]))
    tpki.ensure_ingress_leaf(_store(fresh))
    vault = _vault(fresh)
    secrets, certs = vault.secret_client(), vault.certificate_client()
    (tmp_path / "root.pem").write_text(secrets.get_secret("root-cert").value or "")
    (tmp_path / "chain.pem").write_text(
        secrets.get_secret(cert_chain_secret_name(CLUSTERS[0])).value or ""
    )
    for name in (ca_certificate_name(CLUSTERS[0]), tpki.INGRESS_CERT):
        pem = public_cert(certs.get_certificate(name)).public_bytes(Encoding.PEM)
        (tmp_path / f"{name}.pem").write_bytes(pem)
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", "root.pem", f"{name}.pem"],
            cwd=tmp_path, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    chain = pki.load_pem_chain((tmp_path / "chain.pem").read_bytes())
    assert chain == [
        public_cert(certs.get_certificate(ca_certificate_name(CLUSTERS[0]))),
        *_published_roots(fresh),
    ]


@pytest.mark.parametrize("round_", range(5))
def test_two_runs_at_the_same_moment_make_one_root_and_agreeing_intermediates(
    fresh: str, round_: int
) -> None:
    first, second = _together([lambda: tpki.ensure_root(_store(fresh), CLUSTERS)] * 2)
    assert first[0].version == second[0].version  # both use the same root key version
    assert _enabled_root_versions(fresh) == [first[0].version]  # a loser was disabled
    roots = _published_roots(fresh)
    assert len(roots) == 1
    # Each cluster's intermediate, ensured by both runs at once: the chain stored is the chain
    # of the certificate stored, under the one root.
    _together(
        [
            lambda c=c: tpki.ensure_intermediate(_store(fresh), _c(c))
            for c in CLUSTERS
            for _ in (1, 2)
        ]
    )
    vault = _vault(fresh)
    for c in CLUSTERS:
        ca = public_cert(vault.certificate_client().get_certificate(ca_certificate_name(c)))
        chain = pki.load_pem_chain(
            (vault.secret_client().get_secret(cert_chain_secret_name(c)).value or "").encode()
        )
        assert chain == [ca, roots[0]]
        assert pki.signed_by(ca, roots[0])


def _root_of(vault: KeyVault, version: str) -> x509.Certificate:
    key = vault.key_client().get_key(tpki.ROOT_KEY, version)
    return pki.root_ca_certificate(
        tpki._jwk_public_key(key),
        tpki._vault_signer(vault, str(key.id)),
        created=key.properties.created_on,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("published", ["older", "newer", "neither"])
def test_a_split_vault_converges_on_one_root_without_a_third(
    fresh: str, published: str, emulator: AzureEmulator
) -> None:
    # The state the attack left: two enabled root versions, the intermediates signed by the
    # newer one (which the ensure step read as "latest"), root-cert holding one or the other.
    vault = _vault(fresh)
    keys, secrets = vault.key_client(), vault.secret_client()
    older = tpki._create_root_key(vault, SMALL)
    time.sleep(1.1)  # Key Vault's creation times are whole seconds: make "older" unambiguous
    newer = tpki._create_root_key(vault, SMALL)
    roots = {"older": _root_of(vault, older), "newer": _root_of(vault, newer)}
    signer = roots["newer"].public_bytes(Encoding.PEM).decode()
    secrets.set_secret(tpki.ROOT_CERT_OBJECT, signer, tags={tpki.KEY_VERSION_TAG: newer})
    secrets.set_secret("root-cert", signer)
    tpki.ensure_intermediate(_store(fresh), _c(CLUSTERS[0]))
    stale = vault.certificate_client().get_certificate(ca_certificate_name(CLUSTERS[0]))
    assert pki.signed_by(public_cert(stale), roots["newer"])
    if published == "neither":
        emulator.drop_secret("root-cert")
    else:
        secrets.set_secret("root-cert", roots[published].public_bytes(Encoding.PEM).decode())

    refs = tpki.ensure_root(_store(fresh), CLUSTERS)
    # The root the clusters already trust wins; with none published, the older one.
    winner = {"older": older, "newer": newer, "neither": older}[published]
    assert refs[0].version == winner
    assert _enabled_root_versions(fresh) == [winner]
    assert len(list(keys.list_properties_of_key_versions(tpki.ROOT_KEY))) == 2  # no third
    assert _published_roots(fresh) == [roots["newer" if winner == newer else "older"]]
    # An intermediate signed by the root that lost is reissued under the winner, and the
    # version it replaces stays readable in Key Vault.
    written = tpki.ensure_intermediate(_store(fresh), _c(CLUSTERS[0]))
    assert written[0].written is (winner == older)
    ca = public_cert(vault.certificate_client().get_certificate(ca_certificate_name(CLUSTERS[0])))
    assert pki.signed_by(ca, _published_roots(fresh)[0])
    kept = vault.certificate_client().get_certificate_version(
        ca_certificate_name(CLUSTERS[0]), str(stale.properties.version)
    )
    assert kept.cer == stale.cer
    assert tpki.ensure_root(_store(fresh), CLUSTERS)[0].written is False  # converged


def test_an_exportable_root_of_an_older_mesh_keeps_signing_and_a_split_one_converges(
    fresh: str,
) -> None:
    vault = _vault(fresh)
    certs = vault.certificate_client()
    first = generate_root_ca(now=tpki._now(), key_size=2048)
    import_cert_key(certs, tpki.ROOT_CA, first, tags={}, pem=True)
    refs = tpki.ensure_root(_store(fresh), CLUSTERS)
    assert refs[0].kind == "certificate"
    assert refs[0].name == tpki.ROOT_CA
    assert _published_roots(fresh) == [first.cert]
    tpki.ensure_intermediate(_store(fresh), _c(CLUSTERS[0]))
    ca = public_cert(certs.get_certificate(ca_certificate_name(CLUSTERS[0])))
    assert pki.signed_by(ca, first.cert)
    # Two concurrent runs of the old design imported a second root; root-cert holds the first.
    second = generate_root_ca(now=tpki._now(), key_size=2048)
    import_cert_key(certs, tpki.ROOT_CA, second, tags={}, pem=True)
    tpki.ensure_root(_store(fresh), CLUSTERS)
    versions = list(certs.list_properties_of_certificate_versions(tpki.ROOT_CA))
    assert sorted(bool(v.enabled) for v in versions) == [False, True]  # the later one disabled
    assert _published_roots(fresh) == [first.cert]
    assert tpki.ensure_intermediate(_store(fresh), _c(CLUSTERS[0]))[0].written is False
    foreign = generate_root_ca(now=tpki._now(), key_size=2048).cert
    vault.secret_client().set_secret("root-cert", foreign.public_bytes(Encoding.PEM).decode())
    with pytest.raises(tpki.RootCaError, match="nor a root that lost"):
        tpki.ensure_root(_store(fresh), CLUSTERS)


def test_no_request_of_a_fresh_install_carries_key_material(
    fresh: str, emulator: AzureEmulator
) -> None:
    tpki.ensure_root(_store(fresh), CLUSTERS)
    for c in CLUSTERS:
        tpki.request_intermediate(_store(fresh), _c(c))
        tpki.ensure_intermediate(_store(fresh), _c(c))
    tpki.ensure_ingress_leaf(_store(fresh))
    tpki.ensure_frontend(_store(fresh))
    bodies = [
        (e["method"], e["path"], b)
        for e in emulator.requests_log()
        for b in (e.get("request_body") or "", e.get("response_body") or "")
        if b
    ]
    assert bodies  # the log recorded bodies
    for method, path, body in bodies:
        assert "PRIVATE KEY" not in body, (method, path)
        data = _json(body)
        # a secret's value that holds a key (PKCS#12 or PEM) is only ever in a secret read
        value = data.get("value") if isinstance(data, dict) else None
        if isinstance(value, str) and len(value) > 200:
            assert "BEGIN" not in value or "PRIVATE" not in value, (method, path)
            raw = _b64(value)
            assert raw is None or bytes.fromhex("2a864886f70d010c") not in raw, (method, path)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except ValueError:
        return None
