"""Key Vault data plane: secrets here; certificates in :mod:`.certificates`, keys in :mod:`.keys`.

One vault per emulator, addressed as ``https://127.0.0.1:PORT`` (no path prefix). A prefix in
``vault_url`` would reach the server, but the SDK parses every returned id with
``parse_key_vault_id``, which only accepts ``/{collection}/{name}[/{version}]`` paths, so ids
cannot carry a vault name. Ids are built from the request's ``Host`` header, so they match the
``vault_url`` the client used.

Behaviour follows the service: versions are 32-hex ids; soft delete keeps a deleted bundle
(``recoveryId``, ``deletedDate``, ``scheduledPurgeDate``) until purged and blocks reuse of the name
(409); disabled versions answer 403 ``Forbidden``/``SecretDisabled``; lists are paged 25 at a time
with a ``nextLink`` (``$skiptoken``); names are case-insensitive. Access policies are not
enforced on the data plane.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .server import HttpError, Request, Response, Route, route

if TYPE_CHECKING:
    from .x509util import CertVersion

RECOVERY_LEVEL = "Recoverable+Purgeable"
RETENTION_DAYS = 90
_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_PAGE = 25


def now() -> int:
    """Current time as the unix timestamp Key Vault uses in attributes."""
    return int(time.time())


def check_name(name: str) -> None:
    """Raise 400 unless ``name`` is a valid Key Vault object name."""
    if not _NAME.match(name):
        raise HttpError(
            400,
            "BadParameter",
            f"The request URI contains an invalid name: {name}. Follow this link for more "
            "information on Key Vault names: https://aka.ms/KeyVault-Naming",
        )


def not_found(kind: str, name: str) -> HttpError:
    """Key Vault's 404 for a missing secret or certificate."""
    return HttpError(
        404,
        f"{kind}NotFound",
        f"A {kind.lower()} with (name/id) {name} was not found in this key vault. If you recently "
        f"deleted this {kind.lower()} you may be able to recover it using the correct recovery "
        "command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def parse_attributes(data: Any) -> dict[str, Any]:
    """Validate the ``attributes`` object of a request (enabled, nbf, exp)."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HttpError(400, "BadParameter", "attributes must be an object")
    out: dict[str, Any] = {}
    for key in ("enabled", "nbf", "exp"):
        value = data.get(key)
        if value is None:
            continue
        ok = isinstance(value, bool) if key == "enabled" else isinstance(value, int)
        if not ok:
            raise HttpError(400, "BadParameter", f"Invalid value for attributes.{key}")
        out[key] = value
    return out


def page(req: Request, items: list[dict[str, Any]]) -> Response:
    """Return one page of ``items`` with a ``nextLink`` (``$skiptoken`` offset) when more remain."""
    try:
        size = int(req.query.get("maxresults") or _PAGE)
        skip = int(req.query.get("$skiptoken") or 0)
    except ValueError as exc:
        raise HttpError(400, "BadParameter", "Invalid maxresults or $skiptoken") from exc
    if not 1 <= size <= _PAGE:
        raise HttpError(400, "BadParameter", "maxresults must be between 1 and 25")
    nxt = None
    if skip + size < len(items):
        api = req.query.get("api-version", "")
        nxt = (
            f"{req.base_url}{req.path}?api-version={api}&$skiptoken={skip + size}&maxresults={size}"
        )
    return Response(200, {"value": items[skip : skip + size], "nextLink": nxt})


@dataclass
class SecretVersion:
    """One version of a secret; ``cert`` is set for the secret backing a certificate version."""

    version: str
    value: str
    content_type: str | None = None
    tags: dict[str, str] | None = None
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None
    created: int = field(default_factory=now)
    updated: int = field(default_factory=now)
    cert: CertVersion | None = None

    def attributes(self) -> dict[str, Any]:
        """The ``attributes`` object of a bundle."""
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "created": self.created,
            "updated": self.updated,
            "recoveryLevel": RECOVERY_LEVEL,
            "recoverableDays": RETENTION_DAYS,
        }
        out.update({k: v for k, v in (("nbf", self.nbf), ("exp", self.exp)) if v is not None})
        return out


@dataclass
class Secret:
    """A secret and its versions (insertion ordered, last is latest)."""

    name: str
    versions: dict[str, SecretVersion] = field(default_factory=dict)
    deleted_date: int | None = None

    @property
    def latest(self) -> SecretVersion:
        """The current version."""
        return next(reversed(self.versions.values()))

    def version(self, version: str | None) -> SecretVersion:
        """Return ``version`` (latest when empty) or raise 404."""
        found = self.versions.get(version) if version else self.latest
        if found is None:
            raise not_found("Secret", f"{self.name}/{version}")
        return found


def secret_json(
    base: str, secret: Secret, ver: SecretVersion, *, value: bool, item: bool = False, out: str = ""
) -> dict[str, Any]:
    """Serialise a secret version as a SecretBundle (or SecretItem when ``item``)."""
    ident = f"{base}/secrets/{secret.name}" + ("" if item else f"/{ver.version}")
    body: dict[str, Any] = {"id": ident, "attributes": ver.attributes()}
    content_type = ver.content_type
    if value:
        if ver.cert is not None:
            content_type = out or content_type or ""
            body["value"] = ver.cert.secret_value(content_type)
        else:
            body["value"] = ver.value
    if content_type:
        body["contentType"] = content_type
    if ver.tags is not None:
        body["tags"] = ver.tags
    if ver.cert is not None:
        body["managed"] = True
        if not item:
            body["kid"] = f"{base}/keys/{secret.name}/{ver.version}"
    return body


def deleted_json(base: str, kind: str, name: str, deleted_date: int) -> dict[str, Any]:
    """The soft-delete fields of a Deleted*Bundle."""
    return {
        "recoveryId": f"{base}/deleted{kind}/{name}",
        "deletedDate": deleted_date,
        "scheduledPurgeDate": deleted_date + RETENTION_DAYS * 86400,
    }


class SecretStore:
    """Secrets of the vault, live and soft-deleted, keyed by lower-case name."""

    def __init__(self) -> None:
        self.live: dict[str, Secret] = {}
        self.deleted: dict[str, Secret] = {}

    def get(self, name: str, *, deleted: bool = False) -> Secret:
        """Return a live (or soft-deleted) secret or raise 404."""
        found = (self.deleted if deleted else self.live).get(name.lower())
        if found is None:
            raise not_found("Secret", name)
        return found

    def add_version(self, name: str, ver: SecretVersion) -> Secret:
        """Append a version, creating the secret; 409 while a deleted one holds the name."""
        check_name(name)
        if name.lower() in self.deleted:
            raise HttpError(
                409,
                "Conflict",
                f"Secret {name} is currently in a deleted but recoverable state, and its name "
                "cannot be reused; in this state, the secret can only be recovered or purged.",
            )
        secret = self.live.setdefault(name.lower(), Secret(name))
        secret.versions[ver.version] = ver
        return secret

    def drop(self, name: str) -> bool:
        """Remove a secret completely (live and deleted, all versions)."""
        return any([s.pop(name.lower(), None) for s in (self.live, self.deleted)])

    def snapshot(self) -> dict[str, Any]:
        """The secrets as JSON-ready data; a certificate's secret only marks ``certificate``.

        Its key and chain are the certificate store's to save, which links them back on restore.
        """
        return {
            "live": [_secret_json(s) for s in self.live.values()],
            "deleted": [_secret_json(s) for s in self.deleted.values()],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the secrets with a :meth:`snapshot`'s (certificate secrets not yet linked)."""
        self.live = {s.name.lower(): s for s in map(_secret_from_json, data["live"])}
        self.deleted = {s.name.lower(): s for s in map(_secret_from_json, data["deleted"])}

    def routes(self) -> list[Route]:
        """The secrets REST routes."""
        name, deleted = r"/secrets/(?P<name>[^/]+)", r"/deletedsecrets/(?P<name>[^/]+)"
        table = [
            ("GET", r"/secrets/?", self._list),
            ("GET", name + r"/versions/?", self._versions),
            ("PUT", name + r"/?", self._set),
            ("DELETE", name + r"/?", self._delete),
            ("GET", name + r"(?:/(?P<version>[^/]*))?", self._get),
            ("PATCH", name + r"(?:/(?P<version>[^/]*))?", self._update),
            ("GET", deleted + r"/?", self._get_deleted),
            ("DELETE", deleted + r"/?", self._purge),
            ("POST", deleted + r"/recover", self._recover),
        ]
        return [route(method, path, handler, "keyvault") for method, path, handler in table]

    def _set(self, req: Request, m: re.Match[str]) -> Response:
        body = req.json()
        value = body.get("value")
        if not isinstance(value, str):
            raise HttpError(400, "BadParameter", "Property value is required.")
        existing = self.live.get(m["name"].lower())
        if existing is not None and existing.latest.cert is not None:
            raise HttpError(403, "Forbidden", "Operation set is not allowed on a managed secret.")
        attrs = parse_attributes(body.get("attributes"))
        ver = SecretVersion(
            uuid.uuid4().hex, value, body.get("contentType"), body.get("tags"), **attrs
        )
        secret = self.add_version(m["name"], ver)
        return Response(200, secret_json(req.base_url, secret, ver, value=True))

    def _get(self, req: Request, m: re.Match[str]) -> Response:
        secret = self.get(m["name"])
        ver = secret.version(m["version"])
        if not ver.enabled:
            message = "Operation get is not allowed on a disabled secret."
            raise HttpError(403, "Forbidden", message, inner="SecretDisabled")
        out = req.query.get("outContentType", "")
        return Response(200, secret_json(req.base_url, secret, ver, value=True, out=out))

    def _update(self, req: Request, m: re.Match[str]) -> Response:
        secret = self.get(m["name"])
        ver = secret.version(m["version"])
        body = req.json()
        for key, value in parse_attributes(body.get("attributes")).items():
            setattr(ver, key, value)
        if "contentType" in body and ver.cert is None:
            ver.content_type = body["contentType"]
        if "tags" in body:
            ver.tags = body["tags"]
        ver.updated = now()
        return Response(200, secret_json(req.base_url, secret, ver, value=False))

    def _list(self, req: Request, m: re.Match[str]) -> Response:
        items = [
            secret_json(req.base_url, s, s.latest, value=False, item=True)
            for s in self.live.values()
        ]
        return page(req, items)

    def _versions(self, req: Request, m: re.Match[str]) -> Response:
        secret = self.get(m["name"])
        items = [
            secret_json(req.base_url, secret, v, value=False) for v in secret.versions.values()
        ]
        return page(req, items)

    def _delete(self, req: Request, m: re.Match[str]) -> Response:
        secret = self.get(m["name"])
        if secret.latest.cert is not None:
            message = "Operation delete is not allowed on a managed secret."
            raise HttpError(403, "Forbidden", message)
        del self.live[secret.name.lower()]
        secret.deleted_date = now()
        self.deleted[secret.name.lower()] = secret
        return self._get_deleted(req, m)

    def _get_deleted(self, req: Request, m: re.Match[str]) -> Response:
        secret = self.get(m["name"], deleted=True)
        body = secret_json(req.base_url, secret, secret.latest, value=False)
        body.update(deleted_json(req.base_url, "secrets", secret.name, secret.deleted_date or 0))
        return Response(200, body)

    def _purge(self, req: Request, m: re.Match[str]) -> Response:
        del self.deleted[self.get(m["name"], deleted=True).name.lower()]
        return Response(204)

    def _recover(self, req: Request, m: re.Match[str]) -> Response:
        secret = self.deleted.pop(self.get(m["name"], deleted=True).name.lower())
        secret.deleted_date = None
        self.live[secret.name.lower()] = secret
        return Response(200, secret_json(req.base_url, secret, secret.latest, value=False))


_VERSION_FIELDS = (
    "version", "value", "content_type", "enabled", "nbf", "exp", "created", "updated",
)  # fmt: skip


def _secret_json(secret: Secret) -> dict[str, Any]:
    return {
        "name": secret.name,
        "deleted_date": secret.deleted_date,
        "versions": [
            {
                **{k: getattr(v, k) for k in _VERSION_FIELDS},
                "tags": None if v.tags is None else dict(v.tags),
                "certificate": v.cert is not None,
            }
            for v in secret.versions.values()
        ],
    }


def _secret_from_json(data: dict[str, Any]) -> Secret:
    secret = Secret(data["name"], deleted_date=data["deleted_date"])
    for v in data["versions"]:
        fields = {k: v[k] for k in (*_VERSION_FIELDS, "tags")}
        secret.versions[v["version"]] = SecretVersion(**fields)
    return secret
