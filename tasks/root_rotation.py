"""Root rotation in Key Vault (:mod:`meshflow.rootrotation` has the phases): tasks.

The new root is always a non-exportable version of the root key ``istio-root-ca-key``, signed
through Key Vault, tagged ``meshflow-rotation: next`` until phase 2 makes it the mesh root (no
election disables such a version, see :mod:`tasks.pki`). The rotation's state is the secret
``meshflow-root-rotation`` (public facts: phase, versions, the roots' PEMs, ``root-cert`` as it
was), written after every step, so any machine's re-run continues where a run stopped; a
rotation in progress is always continued, never started again. Every step is idempotent.

Needs, besides what the PKI flow needs: key create/update (enable, disable, tags) on the root
vault, and certificate update on it for a mesh whose old root is exportable.
"""

from __future__ import annotations

import datetime as dt
import uuid

from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.secrets import SecretClient
from cryptography.hazmat.primitives.serialization import Encoding

from blocks import KeyVault
from meshflow import pki
from meshflow.errors import InvalidError
from meshflow.manifests import ROOT_CERT_SECRET
from meshflow.rootrotation import (
    NEXT,
    NEXT_TAG,
    STATE_SECRET,
    RootRotationState,
    phase_trust,
)
from meshflow.spec import PkiStore
from tasks.blocking import blocking_task
from tasks.keyvault import (
    PEM_CONTENT_TYPE,
    ObjectRef,
    ensure_secret_value,
    get_secret_value,
    vault_clients,
    vault_errors,
)
from tasks.pki import (
    KEY_VERSION_TAG,
    ROOT_CA,
    ROOT_CERT_OBJECT,
    ROOT_KEY,
    TAGS,
    RootCaError,
    _create_root_key,
    _jwk_public_key,
    _require_root,
    _vault_signer,
    _vaults,
)

JSON_CONTENT_TYPE = "application/json"


def _read_state(secrets: SecretClient) -> RootRotationState | None:
    text = get_secret_value(secrets, STATE_SECRET)
    return RootRotationState.model_validate_json(text) if text else None


def _write_state(vault: KeyVault, state: RootRotationState) -> RootRotationState:
    with vault_clients(vault) as (secrets, _):
        ensure_secret_value(
            secrets, STATE_SECRET, state.model_dump_json(indent=1),
            content_type=JSON_CONTENT_TYPE, tags=TAGS,
        )  # fmt: skip
    return state


def rotation_state(store: PkiStore) -> RootRotationState | None:
    """The mesh's last root rotation as recorded in Key Vault (None: never rotated). A read."""
    vault, _ = _vaults(store)
    with vault_clients(vault) as (secrets, _):
        return _read_state(secrets)


def _next_version(root_vault: KeyVault) -> str | None:
    """The enabled root key version tagged ``next`` (a rotation's new root), if any."""
    keys = root_vault.key_client()
    with vault_errors(root_vault):
        try:
            found = list(keys.list_properties_of_key_versions(ROOT_KEY))
        except ResourceNotFoundError:  # no root key yet: a mesh with an exportable root
            return None
    nxt = [p for p in found if p.enabled is not False and (p.tags or {}).get(NEXT_TAG) == NEXT]
    nxt.sort(key=lambda p: (p.created_on or dt.datetime.min.replace(tzinfo=dt.UTC), p.version))
    return str(nxt[0].version) if nxt else None


def begin_rotation(store: PkiStore) -> RootRotationState:
    """The rotation in progress, or a new one: a new root key version and its certificate.

    Continues a rotation the state records; adopts a ``next`` key version a crashed run made
    before it recorded one; creates a key version only when neither exists. So one rotation
    makes one new root, whatever the number of runs. Writes the state (phase 1, nothing done).

    Raises:
        RootCaError: the mesh has no root (install it first).
    """
    (vault, root_vault), settings = _vaults(store), store.settings
    with vault_clients(vault) as (secrets, _):
        state = _read_state(secrets)
        bundle = get_secret_value(secrets, ROOT_CERT_SECRET)
    if state is not None and state.status == "in progress":
        return state
    old = _require_root(store)
    old_pem = old.cert.public_bytes(Encoding.PEM).decode()
    if not bundle or not pki.load_pem_chain(bundle.encode()) or old.cert not in (
        pki.load_pem_chain(bundle.encode())
    ):  # fmt: skip
        raise RootCaError(
            f"Key Vault {vault.vault_name!r}: {ROOT_CERT_SECRET!r} does not hold the mesh root; "
            "run `meshflow install` (or `meshflow pki ensure`) to repair it before a rotation",
            system="Key Vault", target=vault.vault_name, object=ROOT_CERT_SECRET,
        )  # fmt: skip
    version = _next_version(root_vault)
    keys = root_vault.key_client()
    if version is None:
        with vault_errors(root_vault):
            version = _create_root_key(root_vault, settings, {NEXT_TAG: NEXT})
    with vault_errors(root_vault):
        key = keys.get_key(ROOT_KEY, version)
    cert = pki.root_ca_certificate(
        _jwk_public_key(key), _vault_signer(root_vault, str(key.id)),
        created=key.properties.created_on or dt.datetime.now(dt.UTC), days=settings.root_days,
    )  # fmt: skip
    state = RootRotationState(
        rotation_id=str(uuid.uuid4()), old_kind=old.kind, old_name=old.name,
        old_version=old.version, old_pem=old_pem, old_bundle=bundle,
        new_version=version, new_pem=cert.public_bytes(Encoding.PEM).decode(),
        history=(f"started: new root key version {version}",),
    )  # fmt: skip
    return _write_state(vault, state)


def publish_trust(store: PkiStore, state: RootRotationState) -> ObjectRef:
    """``root-cert`` as the state's phase says (:func:`meshflow.rootrotation.phase_trust`).

    Idempotent: an unchanged bundle writes nothing.
    """
    vault, _ = _vaults(store)
    with vault_clients(vault) as (secrets, _):
        return ensure_secret_value(
            secrets, ROOT_CERT_SECRET, phase_trust(state), content_type=PEM_CONTENT_TYPE,
            tags=TAGS,
        )  # fmt: skip


def _publish_root_certificate(secrets: SecretClient, pem: str, key_version: str) -> bool:
    """``istio-root-ca-cert`` = the certificate of root key version ``key_version``; written?"""
    ref = ensure_secret_value(
        secrets, ROOT_CERT_OBJECT, pem, content_type=PEM_CONTENT_TYPE,
        tags=TAGS | {KEY_VERSION_TAG: key_version},
    )  # fmt: skip
    return ref.written


def switch_root(store: PkiStore, state: RootRotationState) -> list[str]:
    """Phase 2's switch: the new root becomes the mesh root; what was changed.

    In this order, each step idempotent: the new version loses its ``next`` tag; its certificate
    becomes ``istio-root-ca-cert`` (tagged with its version); the old root is disabled (tagged
    ``superseded-by``). The root's certificate secret is written before the old root stops, so
    the mesh root is always one of the two. The caller then reissues the intermediates.
    """
    root_vault = _vaults(store)[1]
    keys, done = root_vault.key_client(), []
    with vault_errors(root_vault):
        new = keys.get_key(ROOT_KEY, state.new_version)
        tags = dict(new.properties.tags or {})
        if tags.pop(NEXT_TAG, None) is not None:
            keys.update_key_properties(ROOT_KEY, state.new_version, tags=tags)
            done.append(f"key {ROOT_KEY} version {state.new_version}: no longer 'next'")
    with vault_clients(root_vault) as (secrets, certs):
        if _publish_root_certificate(secrets, state.new_pem, state.new_version):
            done.append(f"secret {ROOT_CERT_OBJECT}: the new root")
        superseded = TAGS | {"superseded-by": state.new_version}
        if state.old_kind == "exportable":
            for p in certs.list_properties_of_certificate_versions(ROOT_CA):
                if p.enabled is not False:
                    certs.update_certificate_properties(
                        ROOT_CA, str(p.version), enabled=False, tags=superseded
                    )
                    done.append(f"certificate {ROOT_CA} version {p.version}: disabled")
    if state.old_kind == "vault-key":
        with vault_errors(root_vault):
            old = keys.get_key(ROOT_KEY, state.old_version)
            if old.properties.enabled is not False:
                keys.update_key_properties(
                    ROOT_KEY, state.old_version, enabled=False, tags=superseded
                )
                done.append(f"key {ROOT_KEY} version {state.old_version}: disabled")
    return done


def restore_old_root(store: PkiStore, state: RootRotationState) -> list[str]:
    """An abort's switch back (before phase 3): the old root is the mesh root again.

    The new version is disabled (tagged ``aborted``) first, then the old root enabled and its
    certificate restored, so no election can choose the new one again. The caller then
    reissues the intermediates under the old root and restores ``root-cert``.

    Raises:
        InvalidError: phase 3 has started: the clusters no longer trust the old root.
    """
    if not state.abortable:
        raise InvalidError(
            f"root rotation {state.rotation_id} is in phase {state.phase}: the old root is no "
            "longer trusted everywhere, so going back is not safe; finish the rotation instead",
            system="Key Vault", object=STATE_SECRET,
        )  # fmt: skip
    root_vault = _vaults(store)[1]
    keys, done = root_vault.key_client(), []
    with vault_errors(root_vault):
        new = keys.get_key(ROOT_KEY, state.new_version)
        if new.properties.enabled is not False:
            keys.update_key_properties(
                ROOT_KEY, state.new_version, enabled=False,
                tags=TAGS | {NEXT_TAG: "aborted", "rotation": state.rotation_id},
            )  # fmt: skip
            done.append(f"key {ROOT_KEY} version {state.new_version}: disabled (aborted)")
    with vault_clients(root_vault) as (secrets, certs):
        if state.old_kind == "exportable":
            props = certs.get_certificate_version(ROOT_CA, state.old_version).properties
            if props is not None and props.enabled is False:
                certs.update_certificate_properties(
                    ROOT_CA, state.old_version, enabled=True, tags=TAGS
                )
                done.append(f"certificate {ROOT_CA} version {state.old_version}: enabled")
        else:
            old = keys.get_key(ROOT_KEY, state.old_version)
            if old.properties.enabled is False:
                keys.update_key_properties(ROOT_KEY, state.old_version, enabled=True, tags=TAGS)
                done.append(f"key {ROOT_KEY} version {state.old_version}: enabled")
            if _publish_root_certificate(secrets, state.old_pem, state.old_version):
                done.append(f"secret {ROOT_CERT_OBJECT}: the old root again")
    return done


def record(store: PkiStore, state: RootRotationState) -> RootRotationState:
    """Write ``state`` to Key Vault (idempotent); it is what a re-run continues from."""
    return _write_state(_vaults(store)[0], state)


begin_root_rotation = blocking_task("begin-root-rotation")(begin_rotation)
read_root_rotation = blocking_task("read-root-rotation")(rotation_state)
publish_root_trust = blocking_task("publish-root-trust")(publish_trust)
switch_to_new_root = blocking_task("switch-to-new-root")(switch_root)
switch_back_to_old_root = blocking_task("switch-back-to-old-root")(restore_old_root)
record_root_rotation = blocking_task("record-root-rotation")(record)
