"""Microsoft Entra ID (AAD) stand-in: OIDC discovery, client-credentials tokens, token checks.

MSAL (inside ``azure.identity.ClientSecretCredential``) first fetches
``/{tenant}/v2.0/.well-known/openid-configuration`` and then POSTs the form-encoded
client-credentials grant to ``/{tenant}/oauth2/v2.0/token``. Tokens are opaque random strings
remembered by the emulator; ARM and Key Vault routes accept only tokens issued here.

Client applications must be registered (``register_client``), each with one or more client
secrets, as an app registration holds several. As Entra answers: an unknown ``client_id`` is
400 ``unauthorized_client`` / AADSTS700016, a secret the app does not have is 401
``invalid_client`` / AADSTS7000215; azure-identity raises ``ClientAuthenticationError`` for
both. A ``client_assertion`` (workload identity's federated token) is accepted for a registered
app without checking the assertion. Only the emulator's tenant exists; other tenants get
AADSTS90002 like a real, unknown tenant.
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl

from .server import HttpError, Request, Response, Route, route

TOKEN_LIFETIME = 3600


@dataclass(frozen=True)
class Token:
    """What the emulator knows about an access token it issued."""

    client_id: str
    tenant_id: str
    scope: str
    expires_on: float


def _aad_error(status: int, error: str, code: int, description: str) -> Response:
    now = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return Response(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description}",
            "error_codes": [code],
            "timestamp": now,
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
            "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
        },
    )


class Identity:
    """Token issuer and verifier for one tenant and its registered client applications.

    Args:
        tenant_id: The one tenant.
        clients: Applications registered from the start, client id to client secret.
    """

    def __init__(self, tenant_id: str, clients: Mapping[str, str] | None = None) -> None:
        self.tenant_id = tenant_id
        self._tokens: dict[str, Token] = {}
        self._clients: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        for client_id, secret in (clients or {}).items():
            self.register_client(client_id, secret)

    def register_client(self, client_id: str, secret: str) -> None:
        """Register application ``client_id`` (if new) and add ``secret`` to its client secrets.

        Idempotent. Earlier secrets stay valid, as an app registration holds several.

        Raises:
            ValueError: ``client_id`` or ``secret`` is empty or not a string.
        """
        if not isinstance(client_id, str) or not isinstance(secret, str):
            raise ValueError("client_id and secret must be strings")
        if not client_id or not secret:
            raise ValueError("client_id and secret must not be empty")
        with self._lock:
            self._clients.setdefault(client_id.lower(), set()).add(secret)

    def snapshot(self) -> dict[str, Any]:
        """Registered clients and unexpired tokens, as JSON-ready data."""
        alive = time.time()
        with self._lock:
            return {
                "clients": {c: sorted(s) for c, s in self._clients.items()},
                "tokens": {t: asdict(i) for t, i in self._tokens.items() if i.expires_on > alive},
            }

    def restore(self, data: dict[str, Any]) -> None:
        """Add a :meth:`snapshot`'s clients and tokens to those known now.

        Additive, unlike the stores' ``restore``: applications registered before the restore
        (the emulator's ``clients`` argument) keep their secrets.
        """
        with self._lock:
            for client_id, saved in data["clients"].items():
                self._clients.setdefault(client_id, set()).update(saved)
            self._tokens.update({t: Token(**i) for t, i in data["tokens"].items()})

    def _secret_matches(self, client_id: str, secret: str) -> bool:
        with self._lock:
            known = list(self._clients.get(client_id.lower(), ()))
        return any(hmac.compare_digest(secret.encode(), k.encode()) for k in known)

    def _registered(self, client_id: str) -> bool:
        with self._lock:
            return client_id.lower() in self._clients

    def routes(self) -> list[Route]:
        """The OIDC discovery and token routes."""
        tenant = r"/(?P<tenant>[^/]+)"
        return [
            route(
                "GET", tenant + r"(?:/v2\.0)?/\.well-known/openid-configuration", self._oidc, "none"
            ),
            route("POST", tenant + r"/oauth2(?:/v2\.0)?/token", self._token, "none"),
        ]

    def _check_tenant(self, tenant: str) -> Response | None:
        if tenant.lower() == self.tenant_id.lower():
            return None
        return _aad_error(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
        )

    def _oidc(self, req: Request, match: re.Match[str]) -> Response:
        tenant = match["tenant"]
        if (error := self._check_tenant(tenant)) is not None:
            return error
        base = f"{req.base_url}/{tenant}"
        return Response(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "issuer": f"{base}/v2.0",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "EU",
            },
        )

    def _token(self, req: Request, match: re.Match[str]) -> Response:
        if (error := self._check_tenant(match["tenant"])) is not None:
            return error
        form = dict(parse_qsl(req.body.decode(errors="replace")))
        if form.get("grant_type") != "client_credentials":
            return _aad_error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        client_id = form.get("client_id", "")
        if not client_id:
            return _aad_error(
                400, "invalid_request", 900144, "The request body must contain client_id."
            )
        if not self._registered(client_id):
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant_id}'. This can happen if the application has not been installed "
                "by the administrator of the tenant or consented to by any user in the tenant. "
                "You may have sent your authentication request to the wrong tenant.",
            )
        if "client_assertion" not in form:
            if not form.get("client_secret"):
                return _aad_error(
                    401,
                    "invalid_client",
                    7000216,
                    "'client_assertion' or 'client_secret' is required.",
                )
            if not self._secret_matches(client_id, form["client_secret"]):
                return _aad_error(
                    401,
                    "invalid_client",
                    7000215,
                    f"Invalid client secret provided. Ensure the secret being sent in the request "
                    f"is the client secret value, not the client secret ID, for a secret added to "
                    f"app '{client_id}'.",
                )
        token = "emu." + secrets.token_urlsafe(32)
        info = Token(client_id, self.tenant_id, form.get("scope", ""), time.time() + TOKEN_LIFETIME)
        with self._lock:
            self._tokens[token] = info
        return Response(
            200,
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME,
                "ext_expires_in": TOKEN_LIFETIME,
                "access_token": token,
            },
        )

    def verify(self, req: Request) -> Token | None:
        """Return the token info when the request carries a live bearer token issued here."""
        header = next((v for k, v in req.headers.items() if k.lower() == "authorization"), "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            info = self._tokens.get(token.strip())
        if info is None or info.expires_on < time.time():
            return None
        return info

    def require_arm(self, req: Request) -> Token:
        """Return the caller's token or raise ARM's 401."""
        info = self.verify(req)
        if info is not None:
            return info
        has_header = any(k.lower() == "authorization" for k in req.headers)
        code, message = (
            ("InvalidAuthenticationToken", "The access token is invalid.")
            if has_header
            else (
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        )
        challenge = (
            f'Bearer authorization_uri="{req.base_url}/{self.tenant_id}", error="invalid_token", '
            f'error_description="{message}"'
        )
        raise HttpError(401, code, message, headers={"WWW-Authenticate": challenge})

    def require_keyvault(self, req: Request) -> Token:
        """Return the caller's token or raise Key Vault's 401 challenge.

        The challenge's ``resource`` is the parent domain of the host the client addressed
        (``https://0.0.1:PORT`` for ``127.0.0.1:PORT``), the analogue of
        ``https://vault.azure.net`` for ``myvault.vault.azure.net``: that is what the SDK's
        ``verify_challenge_resource`` check requires.
        """
        info = self.verify(req)
        if info is not None:
            return info
        _, dot, parent = req.host.partition(".")
        resource = f"https://{parent if dot else req.host}"
        challenge = f'Bearer authorization="{req.base_url}/{self.tenant_id}", resource="{resource}"'
        raise HttpError(
            401,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
            headers={"WWW-Authenticate": challenge},
        )
