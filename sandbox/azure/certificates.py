"""Key Vault certificates: import (PKCS#12 / PEM), create with a policy, get, list, delete.

As in Azure, every certificate version also exists as a *managed* secret of the same name and
version (``managed: true``, ``kid`` set) whose value is the key and chain as base64 PKCS#12 or
PEM, per the policy's ``secret_props.contentType``. Creating generates the key and answers 202
with a pending operation and its CSR; ``GET .../pending`` says ``inProgress`` for the first
``pending_polls`` polls, then signs the certificate (issuer ``Self``) and says ``completed``.
Issuer ``Unknown`` stays pending until ``POST .../pending/merge`` brings the certificate (chain)
issued for that key, or ``DELETE .../pending`` drops it; other issuers are rejected. A create
request while a creation is still pending is 409 ``Conflict``, as in Azure. Each version's key
is also a *managed* key of the same name and version (``GET /keys/{name}`` answers it with
``managed: true``, see :mod:`.keys`); this store shows those keys to the key store.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import jwk
from .keys import KeyStore, KeyVersion, StoredKey
from .keyvault import (
    Secret,
    SecretStore,
    SecretVersion,
    check_name,
    deleted_json,
    not_found,
    now,
    page,
    parse_attributes,
)
from .persistence import json_copy
from .server import HttpError, Request, Response, Route, route
from .x509util import (
    PEM,
    PKCS12,
    CertVersion,
    Key,
    bad,
    cert_from_b64,
    create_policy,
    import_policy,
    key_from_b64,
    key_to_b64,
    load_pem,
    load_pfx,
    new_key,
    parse_subject,
    self_sign,
)

_IN_PROGRESS = (
    "Pending certificate created. Certificate request is in progress. This may take some time "
    "based on the issuer provider. Please check again later."
)


@dataclass
class Pending:
    """A certificate creation in progress."""

    key: Key
    csr: x509.CertificateSigningRequest
    policy: dict[str, Any]
    request: dict[str, Any]
    polls_left: int
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "inProgress"

    @cached_property
    def key_b64(self) -> str:
        """The key as base64 PKCS#8 DER, for the state file (computed once)."""
        return key_to_b64(self.key)


@dataclass
class Certificate:
    """A certificate's policy, pending operation and versions (last is latest)."""

    name: str
    policy: dict[str, Any]
    versions: dict[str, CertVersion] = field(default_factory=dict)
    pending: Pending | None = None
    deleted_date: int | None = None

    @property
    def latest(self) -> CertVersion:
        """The current version (404 while the first one is still pending)."""
        if not self.versions:
            raise not_found("Certificate", self.name)
        return next(reversed(self.versions.values()))


def _managed_version(cert: Certificate, cv: CertVersion, sv: SecretVersion) -> KeyVersion:
    """The managed key of a certificate version, with its backing secret's attributes."""
    props = cert.policy.get("key_props") or {}
    family = jwk.RSA_TYPES if isinstance(cv.key, rsa.RSAPrivateKey) else jwk.EC_TYPES
    kty = str(props["kty"]) if props.get("kty") in family else family[0]
    return KeyVersion(
        cv.version,
        cv.key,
        kty,
        jwk.key_operations(kty, None),
        sv.tags,
        sv.enabled,
        sv.nbf,
        sv.exp,
        exportable=bool(props.get("exportable", True)),
        created=sv.created,
        updated=sv.updated,
        managed=True,
    )


class CertificateStore:
    """Certificates of the vault; their backing secrets live in ``secrets``, keys in ``keys``."""

    def __init__(
        self,
        secrets: SecretStore,
        pending_polls: int = 1,
        *,
        keys: KeyStore | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        self.secrets = secrets
        self._lock = lock or threading.RLock()
        """The emulator's state lock; imports take it themselves, around the state they touch."""
        self.keys = keys or KeyStore(lock=self._lock)
        """Standalone keys: they hold their names against certificates."""
        self.pending_polls = pending_polls
        self.live: dict[str, Certificate] = {}
        self.deleted: dict[str, Certificate] = {}

    def get(self, name: str, *, deleted: bool = False) -> Certificate:
        """Return a live (or soft-deleted) certificate or raise 404."""
        found = (self.deleted if deleted else self.live).get(name.lower())
        if found is None:
            raise not_found("Certificate", name)
        return found

    def drop(self, name: str) -> bool:
        """Remove a certificate and its secret completely."""
        found = [s.pop(name.lower(), None) for s in (self.live, self.deleted)]
        self.secrets.drop(name)
        return any(found)

    # -- managed keys (the key store's view of certificates) -----------------------------------

    def managed_key(self, name: str, *, deleted: bool = False) -> StoredKey | None:
        """The managed key of certificate ``name`` (live or soft-deleted); None if none issued."""
        cert = (self.deleted if deleted else self.live).get(name.lower())
        secret = (self.secrets.deleted if deleted else self.secrets.live).get(name.lower())
        if cert is None or secret is None or not cert.versions:
            return None
        versions = {
            v: _managed_version(cert, cv, secret.versions[v]) for v, cv in cert.versions.items()
        }
        return StoredKey(cert.name, versions, cert.deleted_date, managed=True)

    def managed_keys(self, *, deleted: bool = False) -> list[StoredKey]:
        """The managed keys of every live (or soft-deleted) certificate that has a version."""
        names = self.deleted if deleted else self.live
        found = (self.managed_key(n, deleted=deleted) for n in names)
        return [k for k in found if k is not None]

    def holds(self, name: str) -> bool:
        """Whether a live certificate, issued or still pending, has this name."""
        return name.lower() in self.live

    # -- persistence --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Certificates as JSON-ready data: DER as base64, keys as base64 PKCS#8 DER."""
        return {
            "live": [_certificate_json(c) for c in self.live.values()],
            "deleted": [_certificate_json(c) for c in self.deleted.values()],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the certificates with a :meth:`snapshot`'s and relink their secrets.

        Call after the secret store's own ``restore``.

        Raises:
            ValueError: a certificate version has no backing secret in the restored secrets.
        """
        self.live = {c.name.lower(): c for c in map(_certificate_from_json, data["live"])}
        self.deleted = {c.name.lower(): c for c in map(_certificate_from_json, data["deleted"])}
        for certs, secrets in (
            (self.live, self.secrets.live),
            (self.deleted, self.secrets.deleted),
        ):
            for name, cert in certs.items():
                for version, cv in cert.versions.items():
                    try:
                        secrets[name].versions[version].cert = cv
                    except KeyError as exc:
                        message = f"certificate {cert.name}/{version} has no backing secret"
                        raise ValueError(message) from exc

    def routes(self) -> list[Route]:
        """The certificates REST routes."""
        name, deleted = r"/certificates/(?P<name>[^/]+)", r"/deletedcertificates/(?P<name>[^/]+)/?"
        table = [
            ("GET", r"/certificates/?", self._list),
            ("POST", name + r"/import", self._import),
            ("POST", name + r"/create", self._create),
            ("GET", name + r"/pending", self._pending),  # a poll may complete the creation
            ("DELETE", name + r"/pending", self._delete_pending),
            ("POST", name + r"/pending/merge", self._merge),
            ("GET", name + r"/policy", self._policy),
            ("GET", name + r"/versions/?", self._versions),
            ("DELETE", name + r"/?", self._delete),
            ("GET", name + r"(?:/(?P<version>[^/]*))?", self._get),
            ("PATCH", name + r"(?:/(?P<version>[^/]*))?", self._update),
            ("GET", deleted, self._get_deleted),
            ("DELETE", deleted, self._purge),
        ]
        unlocked = (self._import, self._create)  # they take the lock around state themselves
        return [
            route(
                method,
                path,
                handler,
                "keyvault",
                locked=handler not in unlocked,
                mutates=handler == self._pending,
            )
            for method, path, handler in table
        ]

    def _check_free(self, name: str) -> None:
        check_name(name)
        if name.lower() in self.deleted:
            raise HttpError(
                409,
                "Conflict",
                f"Certificate {name} is currently in a deleted but recoverable state, and its "
                "name cannot be reused; in this state, the certificate can only be recovered or "
                "purged.",
            )
        secret = self.secrets.live.get(name.lower())
        if secret is not None and secret.latest.cert is None:
            raise HttpError(409, "Conflict", f"There is a secret named {name} already.")
        if name.lower() in self.keys.deleted:
            raise HttpError(
                409,
                "Conflict",
                f"Key {name} is currently in a deleted but recoverable state, and its name "
                "cannot be reused; in this state, the key can only be recovered or purged.",
            )
        if name.lower() in self.keys.live:
            raise HttpError(409, "Conflict", f"There is a key named {name} already.")

    def _check_not_pending(self, name: str, base: str) -> None:
        """Raise Azure's 409 while a creation of certificate ``name`` is still pending."""
        cert = self.live.get(name.lower())
        if cert is None or cert.pending is None or cert.pending.status != "inProgress":
            return
        raise HttpError(
            409,
            "Conflict",
            f"There was a conflict while creating certificate '{base}/certificates/{cert.name}': "
            "a prior operation on this certificate is still pending. This can happen when "
            "multiple operations are performed in parallel against the pending certificate. "
            "To avoid this error, wait for the pending operation to complete (or merge or "
            "delete it) before creating the certificate again.",
        )

    def _add(
        self, name: str, policy: dict[str, Any], cv: CertVersion, body: dict[str, Any]
    ) -> Certificate:
        enabled = parse_attributes(body.get("attributes")).get("enabled", True)
        policy["attributes"] = {"enabled": enabled, "created": now(), "updated": now()}
        cert = self.live.setdefault(name.lower(), Certificate(name, policy))
        cert.policy, cert.versions[cv.version] = policy, cv
        ver = SecretVersion(cv.version, "", policy["secret_props"].get("contentType", PKCS12))
        ver.tags, ver.enabled, ver.cert = body.get("tags"), enabled, cv
        ver.nbf = int(cv.cert.not_valid_before_utc.timestamp())
        ver.exp = int(cv.cert.not_valid_after_utc.timestamp())
        self.secrets.live.setdefault(name.lower(), Secret(name)).versions[cv.version] = ver
        return cert

    def _json(
        self,
        base: str,
        cert: Certificate,
        cv: CertVersion,
        *,
        item: bool = False,
        deleted: bool = False,
    ) -> dict[str, Any]:
        der = cv.cert.public_bytes(serialization.Encoding.DER)
        secrets = self.secrets.deleted if deleted else self.secrets.live
        sv = secrets[cert.name.lower()].versions[cv.version]
        ident = f"{base}/certificates/{cert.name}"
        x5t = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=")  # noqa: S324
        body: dict[str, Any] = {
            "id": ident if item else f"{ident}/{cv.version}",
            "x5t": x5t.decode(),
            "attributes": sv.attributes(),
        }
        if sv.tags is not None:
            body["tags"] = sv.tags
        if item:
            return body
        body.update(
            kid=f"{base}/keys/{cert.name}/{cv.version}",
            sid=f"{base}/secrets/{cert.name}/{cv.version}",
            cer=base64.b64encode(der).decode(),
            policy={"id": f"{ident}/policy", **cert.policy},
            contentType=sv.content_type,
        )
        if cert.pending is not None and cert.pending.status == "inProgress":
            body["pending"] = {"id": f"{ident}/pending"}
        if deleted:
            body.update(deleted_json(base, "certificates", cert.name, cert.deleted_date or 0))
        return body

    def _import(self, req: Request, m: re.Match[str]) -> Response:
        # Not under the state lock while the key is read and checked (see x509util).
        with self._lock:
            self._check_free(m["name"])
        body = req.json()
        value, requested = body.get("value"), body.get("policy") or {}
        if not isinstance(value, str) or not value:
            raise bad("Property value is required.")
        content_type = (requested.get("secret_props") or {}).get("contentType") or PKCS12
        cv = (load_pem if content_type == PEM else load_pfx)(value, body.get("pwd"))
        with self._lock:
            self._check_free(m["name"])
            cert = self._add(m["name"], import_policy(requested, cv), cv, body)
            return Response(200, self._json(req.base_url, cert, cv))

    def _create(self, req: Request, m: re.Match[str]) -> Response:
        # Not under the state lock while the key is generated (see x509util).
        with self._lock:
            self._check_free(m["name"])
            self._check_not_pending(m["name"], req.base_url)
        body = req.json()
        requested = body.get("policy") or {}
        issuer = str((requested.get("issuer") or {}).get("name") or "Unknown")
        if issuer.lower() not in ("self", "unknown"):
            raise bad(f"Issuer '{issuer}' is not configured (the emulator has Self and Unknown).")
        parse_attributes(body.get("attributes"))
        parse_subject(str((requested.get("x509_props") or {}).get("subject") or ""))
        key = new_key(requested.get("key_props") or {})
        policy = create_policy(requested, key)
        subject = parse_subject(policy["x509_props"]["subject"])
        csr = (
            x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        )
        with self._lock:
            self._check_free(m["name"])
            self._check_not_pending(m["name"], req.base_url)  # another one came in meanwhile
            cert = self.live.setdefault(m["name"].lower(), Certificate(m["name"], policy))
            cert.pending = Pending(key, csr, policy, body, self.pending_polls)
            location = f"{req.base_url}/certificates/{cert.name}/pending"
            headers = {"Location": f"{location}?api-version={req.query.get('api-version', '')}"}
            return Response(202, self._op_json(req.base_url, cert, cert.pending), headers)

    def _in_progress(self, name: str) -> tuple[Certificate, Pending]:
        cert = self.get(name)
        op = cert.pending
        if op is None or op.status != "inProgress":
            raise HttpError(404, "PendingCertificateNotFound", "Pending certificate not found")
        return cert, op

    def _delete_pending(self, req: Request, m: re.Match[str]) -> Response:
        cert, op = self._in_progress(m["name"])
        cert.pending = None
        if not cert.versions:  # never issued: nothing of it is left
            del self.live[cert.name.lower()]
        return Response(200, self._op_json(req.base_url, cert, op))

    def _merge(self, req: Request, m: re.Match[str]) -> Response:
        cert, op = self._in_progress(m["name"])
        if op.policy["issuer"]["name"].lower() != "unknown":
            raise HttpError(
                403, "Forbidden", "Merge is only allowed for certificates with issuer 'Unknown'."
            )
        body = req.json()
        x5c = body.get("x5c")
        if not isinstance(x5c, list) or not x5c:
            raise bad("Property x5c is required.")
        try:
            chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in x5c]
        except (ValueError, TypeError) as exc:
            raise bad("The specified X.509 certificate content can not be read.") from exc
        leaf = chain[0]
        if leaf.public_key() != op.key.public_key():
            raise bad("Public key from x509 certificate and key of this instance doesn't match")
        cv = CertVersion(leaf, op.key, chain[1:])
        request = {**op.request, **{k: body[k] for k in ("attributes", "tags") if k in body}}
        self._add(cert.name, op.policy, cv, request)
        op.status = "completed"
        return Response(201, self._json(req.base_url, cert, cv))

    def _op_json(self, base: str, cert: Certificate, op: Pending) -> dict[str, Any]:
        done = op.status == "completed"
        body = {
            "id": f"{base}/certificates/{cert.name}/pending",
            "issuer": {"name": op.policy["issuer"]["name"]},
            "csr": base64.b64encode(op.csr.public_bytes(serialization.Encoding.DER)).decode(),
            "cancellation_requested": False,
            "status": op.status,
            "status_details": "" if done else _IN_PROGRESS,
            "request_id": op.request_id,
        }
        return {**body, "target": f"{base}/certificates/{cert.name}"} if done else body

    def _pending(self, req: Request, m: re.Match[str]) -> Response:
        cert = self.get(m["name"])
        op = cert.pending
        if op is None:
            raise HttpError(404, "PendingCertificateNotFound", "Pending certificate not found")
        if op.status == "inProgress" and op.policy["issuer"]["name"].lower() == "self":
            op.polls_left -= 1
            if op.polls_left < 0:
                cv = CertVersion(self_sign(op.key, op.policy), op.key)
                self._add(cert.name, op.policy, cv, op.request)
                op.status = "completed"
        return Response(200, self._op_json(req.base_url, cert, op))

    def _get(self, req: Request, m: re.Match[str]) -> Response:
        cert = self.get(m["name"])
        cv = cert.versions.get(m["version"]) if m["version"] else cert.latest
        if cv is None:
            raise not_found("Certificate", f"{cert.name}/{m['version']}")
        return Response(200, self._json(req.base_url, cert, cv))

    def _update(self, req: Request, m: re.Match[str]) -> Response:
        """``update_certificate_properties``: a version's enabled flag and tags (its secret's)."""
        cert = self.get(m["name"])
        cv = cert.versions.get(m["version"]) if m["version"] else cert.latest
        if cv is None:
            raise not_found("Certificate", f"{cert.name}/{m['version']}")
        body = req.json()
        sv = self.secrets.live[cert.name.lower()].versions[cv.version]
        for key, value in parse_attributes(body.get("attributes")).items():
            setattr(sv, key, value)
        if "tags" in body:
            sv.tags = body["tags"]
        sv.updated = now()
        return Response(200, self._json(req.base_url, cert, cv))

    def _policy(self, req: Request, m: re.Match[str]) -> Response:
        cert = self.get(m["name"])
        return Response(
            200, {"id": f"{req.base_url}/certificates/{cert.name}/policy", **cert.policy}
        )

    def _versions(self, req: Request, m: re.Match[str]) -> Response:
        cert = self.get(m["name"])
        items = [self._json(req.base_url, cert, cv, item=True) for cv in cert.versions.values()]
        for item, version in zip(items, cert.versions, strict=True):
            item["id"] += f"/{version}"
        return page(req, items)

    def _list(self, req: Request, m: re.Match[str]) -> Response:
        certs = [c for c in self.live.values() if c.versions]
        return page(req, [self._json(req.base_url, c, c.latest, item=True) for c in certs])

    def _delete(self, req: Request, m: re.Match[str]) -> Response:
        cert = self.get(m["name"])
        cert.latest  # noqa: B018 - 404 while only a creation is pending
        del self.live[cert.name.lower()]
        cert.deleted_date = now()
        self.deleted[cert.name.lower()] = cert
        secret = self.secrets.live.pop(cert.name.lower())
        secret.deleted_date = cert.deleted_date
        self.secrets.deleted[cert.name.lower()] = secret
        return Response(200, self._json(req.base_url, cert, cert.latest, deleted=True))

    def _get_deleted(self, req: Request, m: re.Match[str]) -> Response:
        cert = self.get(m["name"], deleted=True)
        return Response(200, self._json(req.base_url, cert, cert.latest, deleted=True))

    def _purge(self, req: Request, m: re.Match[str]) -> Response:
        del self.deleted[self.get(m["name"], deleted=True).name.lower()]
        self.secrets.deleted.pop(m["name"].lower(), None)
        return Response(204)


def _certificate_json(cert: Certificate) -> dict[str, Any]:
    op = cert.pending
    pending = None
    if op is not None:
        pending = {
            "key": op.key_b64,
            "csr": base64.b64encode(op.csr.public_bytes(serialization.Encoding.DER)).decode(),
            "policy": json_copy(op.policy),
            "request": json_copy(op.request),
            "polls_left": op.polls_left,
            "request_id": op.request_id,
            "status": op.status,
        }
    return {
        "name": cert.name,
        "policy": json_copy(cert.policy),
        "deleted_date": cert.deleted_date,
        "versions": [
            {"version": cv.version, "key": cv.key_b64, "certs": cv.certs_b64}
            for cv in cert.versions.values()
        ],
        "pending": pending,
    }


def _certificate_from_json(data: dict[str, Any]) -> Certificate:
    cert = Certificate(data["name"], data["policy"], deleted_date=data["deleted_date"])
    for v in data["versions"]:
        leaf, *chain = (cert_from_b64(c) for c in v["certs"])
        cert.versions[v["version"]] = CertVersion(leaf, key_from_b64(v["key"]), chain, v["version"])
    if (op := data["pending"]) is not None:
        csr = x509.load_der_x509_csr(base64.b64decode(op["csr"]))
        cert.pending = Pending(
            key_from_b64(op["key"]),
            csr,
            op["policy"],
            op["request"],
            op["polls_left"],
            op["request_id"],
            op["status"],
        )
    return cert
