"""Key Vault keys: create, get, list, versions, update, sign/verify, soft delete, recover, purge.

REST 7.x shapes as ``azure-keyvault-keys`` (``KeyClient``, ``CryptographyClient``) uses them. A
key is made in the vault and never leaves it: bundles carry the public JWK only, and there is no
import, backup or release route. RSA keys come from :func:`.x509util.new_key` (so keys made
ahead are used, and no key is made under the state lock); EC keys are instant.

Keys share the vault's name space with certificates, as in Azure: each certificate version's key
is a *managed* key of the same name and version (``managed: true``), readable and usable for
sign/verify here, but not writable (403, as for managed secrets). Those managed keys are not held
in this store: the certificate store shows them through :class:`ManagedKeys`.

Service behaviour kept: versions are 32-hex ids; attributes carry integer Unix-seconds
``created``/``updated``, ``recoveryLevel`` and ``exportable`` (false unless asked for, which needs
a ``release_policy``); a disabled version can still be read but not used (403 ``Forbidden``, inner
``KeyDisabled``); a version outside its ``nbf``/``exp`` window cannot sign (403); an operation
missing from ``key_ops`` is refused (403); soft delete keeps a ``DeletedKeyBundle`` until purged
and blocks the name (409); lists are paged like secrets.
"""

from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from . import jwk
from .keyvault import (
    RECOVERY_LEVEL,
    RETENTION_DAYS,
    check_name,
    deleted_json,
    not_found,
    now,
    page,
    parse_attributes,
)
from .persistence import json_copy
from .server import HttpError, Request, Response, Route, route
from .x509util import Key, bad, key_from_b64, key_to_b64, new_key

_KTYS = jwk.RSA_TYPES + jwk.EC_TYPES


@dataclass
class KeyVersion:
    """One version of a key: its private half (never returned) and attributes."""

    version: str
    key: Key
    kty: str
    key_ops: list[str]
    tags: dict[str, str] | None = None
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None
    exportable: bool = False
    release_policy: dict[str, Any] | None = None
    created: int = field(default_factory=now)
    updated: int = field(default_factory=now)
    managed: bool = False

    @cached_property
    def key_b64(self) -> str:
        """The private key as base64 PKCS#8 DER, for the state file (computed once)."""
        return key_to_b64(self.key)

    def attributes(self) -> dict[str, Any]:
        """The ``attributes`` object of a bundle."""
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "created": self.created,
            "updated": self.updated,
            "recoveryLevel": RECOVERY_LEVEL,
            "recoverableDays": RETENTION_DAYS,
            "exportable": self.exportable,
        }
        out.update({k: v for k, v in (("nbf", self.nbf), ("exp", self.exp)) if v is not None})
        return out


@dataclass
class StoredKey:
    """A key and its versions (insertion ordered, last is latest)."""

    name: str
    versions: dict[str, KeyVersion] = field(default_factory=dict)
    deleted_date: int | None = None
    managed: bool = False

    @property
    def latest(self) -> KeyVersion:
        """The current version."""
        return next(reversed(self.versions.values()))

    def version(self, version: str | None) -> KeyVersion:
        """Return ``version`` (latest when empty) or raise 404."""
        found = self.versions.get(version) if version else self.latest
        if found is None:
            raise not_found("Key", f"{self.name}/{version}")
        return found


class ManagedKeys(Protocol):
    """Where the keys of certificates come from (the certificate store)."""

    def managed_key(self, name: str, *, deleted: bool = False) -> StoredKey | None:
        """The key of certificate ``name`` (live or soft-deleted), None if there is none."""

    def managed_keys(self, *, deleted: bool = False) -> list[StoredKey]:
        """The keys of every live (or soft-deleted) certificate with a version."""

    def holds(self, name: str) -> bool:
        """Whether a live certificate (issued or still pending) has this name."""


class _NoCertificates:
    def managed_key(self, name: str, *, deleted: bool = False) -> StoredKey | None:
        return None

    def managed_keys(self, *, deleted: bool = False) -> list[StoredKey]:
        return []

    def holds(self, name: str) -> bool:
        return False


def key_json(
    base: str, stored: StoredKey, ver: KeyVersion, *, item: bool = False, versioned: bool = True
) -> dict[str, Any]:
    """A KeyBundle (or KeyItem when ``item``; its ``kid`` names no version unless ``versioned``)."""
    kid = f"{base}/keys/{stored.name}/{ver.version}"
    body: dict[str, Any]
    if item:
        body = {"kid": kid if versioned else f"{base}/keys/{stored.name}"}
    else:
        body = {"key": jwk.public_jwk(ver.key, kid, ver.kty, ver.key_ops)}
    body["attributes"] = ver.attributes()
    if ver.tags is not None:
        body["tags"] = ver.tags
    if ver.managed:
        body["managed"] = True
    if ver.release_policy is not None and not item:
        body["release_policy"] = ver.release_policy
    return body


def _deleted_key_json(base: str, stored: StoredKey, *, item: bool = False) -> dict[str, Any]:
    body = key_json(base, stored, stored.latest, item=item, versioned=False)
    body.update(deleted_json(base, "keys", stored.name, stored.deleted_date or 0))
    return body


def _key_attributes(data: Any) -> dict[str, Any]:
    """``parse_attributes`` plus the keys-only ``exportable`` flag."""
    out = parse_attributes(data)
    exportable = data.get("exportable") if isinstance(data, dict) else None
    if exportable is not None:
        if not isinstance(exportable, bool):
            raise bad("Invalid value for attributes.exportable")
        out["exportable"] = exportable
    return out


def _tags(value: Any) -> dict[str, str] | None:
    if value is not None and not (
        isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    ):
        raise bad("tags must be an object of strings.")
    return None if value is None else dict(value)


def _release_policy(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise bad("release_policy must be an object.")
    return None if value is None else dict(value)


@dataclass(frozen=True)
class _CreateRequest:
    kty: str
    key_props: dict[str, Any]  # what new_key takes: kty, key_size, crv
    key_ops: list[str]
    attributes: dict[str, Any]
    tags: dict[str, str] | None
    release_policy: dict[str, Any] | None


def _create_request(body: Any) -> _CreateRequest:
    """Validate a ``KeyCreateParameters`` body (before any key is made)."""
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.")
    kty = body.get("kty")
    if kty in ("oct", "oct-HSM"):
        raise bad("Key type oct is only supported by Managed HSM, not by a vault.")
    if kty not in _KTYS:
        raise bad(f"Property kty is required and must be one of {list(_KTYS)} (got {kty!r}).")
    exponent = body.get("public_exponent")
    if exponent not in (None, 65537):
        raise bad(f"Unsupported public_exponent {exponent}: the emulator makes 65537 keys.")
    props: dict[str, Any] = {"kty": kty, "key_size": body.get("key_size"), "crv": body.get("crv")}
    if kty in jwk.EC_TYPES and props["crv"] is None:
        props["crv"] = "P-256"
    attributes = _key_attributes(body.get("attributes"))
    release_policy = _release_policy(body.get("release_policy"))
    if attributes.get("exportable") and release_policy is None:
        raise bad("An exportable key needs a release_policy when its first version is created.")
    return _CreateRequest(
        kty,
        props,
        jwk.key_operations(kty, body.get("key_ops")),
        attributes,
        _tags(body.get("tags")),
        release_policy,
    )


def _forbidden(message: str, inner: str | None = None) -> HttpError:
    return HttpError(403, "Forbidden", message, inner=inner)


def check_usable(ver: KeyVersion, operation: str, *, at: int) -> None:
    """Raise Key Vault's 403 unless ``ver`` may do ``operation`` at Unix time ``at``.

    A disabled version is refused first (inner ``KeyDisabled``); then, for operations that make
    something new (sign, encrypt, wrapKey), a time outside ``nbf``/``exp``; then an operation
    missing from ``key_ops``.
    """
    if not ver.enabled:
        raise _forbidden(f"Operation {operation} is not allowed on a disabled key.", "KeyDisabled")
    if operation in ("sign", "encrypt", "wrapKey"):
        if ver.nbf is not None and at < ver.nbf:
            message = f"Operation {operation} is not allowed on a key that is not yet valid."
            raise _forbidden(message, "KeyNotYetValid")
        if ver.exp is not None and at >= ver.exp:
            message = f"Operation {operation} is not allowed on an expired key."
            raise _forbidden(message, "KeyExpired")
    if operation not in ver.key_ops:
        raise _forbidden(f"Operation {operation} is not permitted on this key.")


class KeyStore:
    """Standalone keys of the vault, live and soft-deleted, keyed by lower-case name."""

    def __init__(self, *, lock: threading.RLock | None = None) -> None:
        self._lock = lock or threading.RLock()
        """The emulator's state lock; unlocked routes take it around the state they touch."""
        self.live: dict[str, StoredKey] = {}
        self.deleted: dict[str, StoredKey] = {}
        self.managed: ManagedKeys = _NoCertificates()
        """The certificate store, once the emulator wires it in."""

    def get(self, name: str, *, deleted: bool = False) -> StoredKey:
        """Return a live (or soft-deleted) key, standalone or a certificate's, or raise 404."""
        found = (self.deleted if deleted else self.live).get(name.lower())
        found = found or self.managed.managed_key(name, deleted=deleted)
        if found is None:
            raise not_found("Key", name)
        return found

    def drop(self, name: str) -> bool:
        """Remove a standalone key completely (live and deleted, all versions)."""
        return any([s.pop(name.lower(), None) for s in (self.live, self.deleted)])

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The standalone keys as JSON-ready data (private keys as base64 PKCS#8 DER)."""
        return {
            "live": [_stored_json(k) for k in self.live.values()],
            "deleted": [_stored_json(k) for k in self.deleted.values()],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the store's keys with a :meth:`snapshot`'s."""
        self.live = {k.name.lower(): k for k in map(_stored_from_json, data["live"])}
        self.deleted = {k.name.lower(): k for k in map(_stored_from_json, data["deleted"])}

    # -- routes -------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The keys REST routes."""
        name, deleted = r"/keys/(?P<name>[^/]+)", r"/deletedkeys/(?P<name>[^/]+)"
        version = r"(?:/(?P<version>[^/]*))?"
        table = [
            ("GET", r"/keys/?", self._list),
            ("GET", r"/deletedkeys/?", self._list_deleted),
            ("POST", name + r"/create/?", self._create),
            ("GET", name + r"/versions/?", self._versions),
            ("POST", name + version + r"/(?P<op>sign|verify)/?", self._crypto),
            ("DELETE", name + r"/?", self._delete),
            ("GET", name + version, self._get),
            ("PATCH", name + version, self._update),
            ("GET", deleted + r"/?", self._get_deleted),
            ("DELETE", deleted + r"/?", self._purge),
            ("POST", deleted + r"/recover/?", self._recover),
        ]
        unlocked = (self._create, self._crypto)  # they take the lock around state themselves
        return [
            route(method, path, handler, "keyvault", locked=handler not in unlocked)
            for method, path, handler in table
        ]

    def _check_writable(self, name: str) -> None:
        check_name(name)
        if name.lower() in self.deleted or self.managed.managed_key(name, deleted=True):
            raise HttpError(
                409,
                "Conflict",
                f"Key {name} is currently in a deleted but recoverable state, and its name "
                "cannot be reused; in this state, the key can only be recovered or purged.",
            )
        if self.managed.holds(name):
            raise _forbidden("Operation create is not allowed on a managed key.")

    def _create(self, req: Request, m: re.Match[str]) -> Response:
        # Not under the state lock while the key is made (see x509util).
        with self._lock:
            self._check_writable(m["name"])
        params = _create_request(req.json())
        key = new_key(params.key_props)
        with self._lock:
            self._check_writable(m["name"])
            ver = KeyVersion(
                uuid.uuid4().hex,
                key,
                params.kty,
                params.key_ops,
                params.tags,
                release_policy=params.release_policy,
                **params.attributes,
            )
            stored = self.live.setdefault(m["name"].lower(), StoredKey(m["name"]))
            stored.versions[ver.version] = ver
            return Response(200, key_json(req.base_url, stored, ver))

    def _get(self, req: Request, m: re.Match[str]) -> Response:
        stored = self.get(m["name"])
        return Response(200, key_json(req.base_url, stored, stored.version(m["version"])))

    def _update(self, req: Request, m: re.Match[str]) -> Response:
        stored = self.get(m["name"])
        ver = stored.version(m["version"])
        if stored.managed:
            raise _forbidden("Operation update is not allowed on a managed key.")
        body = req.json()
        if not isinstance(body, dict):
            raise bad("The request body must be a JSON object.")
        attributes = _key_attributes(body.get("attributes"))
        if attributes.pop("exportable", ver.exportable) != ver.exportable:
            raise bad("attributes.exportable cannot be changed once the key exists.")
        ops = jwk.key_operations(ver.kty, body["key_ops"]) if "key_ops" in body else ver.key_ops
        tags = _tags(body["tags"]) if "tags" in body else ver.tags
        policy = body.get("release_policy")
        for key, value in attributes.items():
            setattr(ver, key, value)
        ver.key_ops, ver.tags = ops, tags
        if policy is not None:
            ver.release_policy = _release_policy(policy)
        ver.updated = now()
        return Response(200, key_json(req.base_url, stored, ver))

    def _crypto(self, req: Request, m: re.Match[str]) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise bad("The request body must be a JSON object.")
        with self._lock:
            stored = self.get(m["name"])
            ver = stored.version(m["version"])
            check_usable(ver, m["op"], at=now())
            kid = f"{req.base_url}/keys/{stored.name}/{ver.version}"
        # The key is immutable: sign outside the state lock (RSA-4096 takes milliseconds).
        if m["op"] == "sign":
            digest = jwk.from_b64url(body.get("value"), "value")
            signature = jwk.sign(ver.key, body.get("alg"), digest)
            return Response(200, {"kid": kid, "value": jwk.b64url(signature)})
        digest = jwk.from_b64url(body.get("digest"), "digest")
        signature = jwk.from_b64url(body.get("value"), "value")
        return Response(200, {"value": jwk.verify(ver.key, body.get("alg"), digest, signature)})

    def _all(self, *, deleted: bool) -> list[StoredKey]:
        own = self.deleted if deleted else self.live
        return [*own.values(), *self.managed.managed_keys(deleted=deleted)]

    def _list(self, req: Request, m: re.Match[str]) -> Response:
        items = [
            key_json(req.base_url, k, k.latest, item=True, versioned=False)
            for k in self._all(deleted=False)
        ]
        return page(req, items)

    def _list_deleted(self, req: Request, m: re.Match[str]) -> Response:
        items = [_deleted_key_json(req.base_url, k, item=True) for k in self._all(deleted=True)]
        return page(req, items)

    def _versions(self, req: Request, m: re.Match[str]) -> Response:
        stored = self.get(m["name"])
        items = [key_json(req.base_url, stored, v, item=True) for v in stored.versions.values()]
        return page(req, items)

    def _delete(self, req: Request, m: re.Match[str]) -> Response:
        stored = self.get(m["name"])
        if stored.managed:
            raise _forbidden("Operation delete is not allowed on a managed key.")
        del self.live[stored.name.lower()]
        stored.deleted_date = now()
        self.deleted[stored.name.lower()] = stored
        return Response(200, _deleted_key_json(req.base_url, stored))

    def _get_deleted(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, _deleted_key_json(req.base_url, self.get(m["name"], deleted=True)))

    def _own_deleted(self, name: str, operation: str) -> StoredKey:
        stored = self.get(name, deleted=True)
        if stored.managed:
            raise _forbidden(
                f"Operation {operation} is not allowed on a managed key: {operation} the "
                "certificate instead."
            )
        return stored

    def _purge(self, req: Request, m: re.Match[str]) -> Response:
        del self.deleted[self._own_deleted(m["name"], "purge").name.lower()]
        return Response(204)

    def _recover(self, req: Request, m: re.Match[str]) -> Response:
        stored = self.deleted.pop(self._own_deleted(m["name"], "recover").name.lower())
        stored.deleted_date = None
        self.live[stored.name.lower()] = stored
        return Response(200, key_json(req.base_url, stored, stored.latest))


def _stored_json(stored: StoredKey) -> dict[str, Any]:
    return {
        "name": stored.name,
        "deleted_date": stored.deleted_date,
        "versions": [
            {
                "version": v.version,
                "key": v.key_b64,
                "kty": v.kty,
                "key_ops": list(v.key_ops),
                "tags": None if v.tags is None else dict(v.tags),
                "enabled": v.enabled,
                "nbf": v.nbf,
                "exp": v.exp,
                "exportable": v.exportable,
                "release_policy": json_copy(v.release_policy),
                "created": v.created,
                "updated": v.updated,
            }
            for v in stored.versions.values()
        ],
    }


def _stored_from_json(data: dict[str, Any]) -> StoredKey:
    stored = StoredKey(data["name"], deleted_date=data["deleted_date"])
    for v in data["versions"]:
        fields = {k: v[k] for k in v if k != "key"}
        stored.versions[v["version"]] = KeyVersion(key=key_from_b64(v["key"]), **fields)
    return stored
