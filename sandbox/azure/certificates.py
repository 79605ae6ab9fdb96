"""Key Vault certificates: import (PKCS#12 / PEM), create with a policy, get, list, delete.

As in Azure, every certificate version also exists as a *managed* secret of the same name and
version (``managed: true``, ``kid`` set) whose value is the key and chain as base64 PKCS#12 or
PEM, per the policy's ``secret_props.contentType``. Creating generates the key and answers 202
with a pending operation and its CSR; ``GET .../pending`` says ``inProgress`` for the first
``pending_polls`` polls, then signs the certificate (issuer ``Self``) and says ``completed``.
Issuer ``Unknown`` stays pending until ``POST .../pending/merge`` brings the certificate (chain)
issued for that key, or ``DELETE .../pending`` drops it; other issuers are rejected. Keys exist
only as ``kid`` references.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

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
from .server import HttpError, Request, Response, Route, route
from .x509util import (
    PEM,
    PKCS12,
    CertVersion,
    Key,
    bad,
    create_policy,
    import_policy,
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


class CertificateStore:
    """Certificates of the vault; their backing secrets live in ``secrets``."""

    def __init__(
        self, secrets: SecretStore, pending_polls: int = 1, *, lock: threading.RLock | None = None
    ) -> None:
        self.secrets = secrets
        self._lock = lock or threading.RLock()
        """The emulator's state lock; imports take it themselves, around the state they touch."""
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

    def routes(self) -> list[Route]:
        """The certificates REST routes."""
        name, deleted = r"/certificates/(?P<name>[^/]+)", r"/deletedcertificates/(?P<name>[^/]+)/?"
        table = [
            ("GET", r"/certificates/?", self._list),
            ("POST", name + r"/import", self._import),
            ("POST", name + r"/create", self._create),
            ("GET", name + r"/pending", self._pending),
            ("DELETE", name + r"/pending", self._delete_pending),
            ("POST", name + r"/pending/merge", self._merge),
            ("GET", name + r"/policy", self._policy),
            ("GET", name + r"/versions/?", self._versions),
            ("DELETE", name + r"/?", self._delete),
            ("GET", name + r"(?:/(?P<version>[^/]*))?", self._get),
            ("GET", deleted, self._get_deleted),
            ("DELETE", deleted, self._purge),
        ]
        unlocked = (self._import, self._create)  # they take the lock around state themselves
        return [
            route(method, path, handler, "keyvault", locked=handler not in unlocked)
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
