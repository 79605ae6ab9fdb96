"""Kubeconfigs as values: parse what AKS returns, build what istiod reads. Pure, no SDK.

:class:`ClusterAccess` is how a kubeconfig is held in memory. Its ``repr`` never shows the token
or key, so it cannot leak through a log line or an exception message.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from meshflow import yamlio

AKS_AAD_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"
"""The Entra application every AAD-enabled AKS API server accepts tokens for."""

AuthKind = Literal["token", "client-certificate", "aad-exec"]


class KubeconfigError(ValueError):
    """A kubeconfig is malformed or uses an authentication meshflow cannot use."""


@dataclass(frozen=True)
class ClusterAccess:
    """The server, its CA and one way to authenticate, taken from a kubeconfig."""

    context: str
    server: str
    ca_pem: bytes = field(repr=False)
    auth: AuthKind
    token: str | None = field(default=None, repr=False)
    client_cert_pem: bytes | None = field(default=None, repr=False)
    client_key_pem: bytes | None = field(default=None, repr=False)


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KubeconfigError(f"{what} is not valid base64") from exc


def _named(items: list[dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return dict(item.get(kind) or {})
    raise KubeconfigError(f"kubeconfig has no {kind} named {name!r}")


def parse_kubeconfig(text: str | bytes) -> ClusterAccess:
    """Parse a kubeconfig's current context into a :class:`ClusterAccess`.

    Accepts the three shapes AKS hands out: a static token, a client certificate (admin
    credentials of a local-accounts cluster) and a kubelogin ``exec`` entry (Entra ID clusters,
    which meshflow answers with an Entra token for the AKS server application).

    Raises:
        KubeconfigError: malformed YAML, missing context/cluster/user, no CA data, or an
            authentication method other than the three above.
    """
    try:
        doc = yamlio.load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError("kubeconfig is not valid YAML") from exc
    if not isinstance(doc, dict):
        raise KubeconfigError("kubeconfig is not a mapping")
    current = doc.get("current-context") or ""
    if not current:
        raise KubeconfigError("kubeconfig has no current-context")
    context = _named(doc.get("contexts", []), current, "context")
    cluster = _named(doc.get("clusters", []), context.get("cluster", ""), "cluster")
    user = _named(doc.get("users", []), context.get("user", ""), "user")
    server = cluster.get("server", "")
    if not server.startswith("https://"):
        raise KubeconfigError(f"context {current!r}: server must be an https:// URL")
    if "certificate-authority-data" not in cluster:
        raise KubeconfigError(f"context {current!r}: no certificate-authority-data")
    ca_pem = _b64(cluster["certificate-authority-data"], "certificate-authority-data")
    common = {"context": current, "server": server, "ca_pem": ca_pem}
    if user.get("token"):
        return ClusterAccess(**common, auth="token", token=str(user["token"]))
    if user.get("client-certificate-data") and user.get("client-key-data"):
        return ClusterAccess(
            **common,
            auth="client-certificate",
            client_cert_pem=_b64(user["client-certificate-data"], "client-certificate-data"),
            client_key_pem=_b64(user["client-key-data"], "client-key-data"),
        )
    if user.get("exec") and "kubelogin" in str(user["exec"].get("command", "")):
        return ClusterAccess(**common, auth="aad-exec")
    raise KubeconfigError(
        f"context {current!r}: user has no token, client certificate or kubelogin exec entry"
    )


def token_kubeconfig(*, cluster_name: str, server: str, ca_pem: bytes, token: str) -> str:
    """A token kubeconfig of the shape ``istioctl create-remote-secret`` writes.

    istiod rejects exec, auth-provider and client-key kubeconfigs by default, so remote secrets
    always carry a service-account token.
    """
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    "server": server,
                },
            }
        ],
        "contexts": [
            {"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}
        ],
        "current-context": cluster_name,
        "preferences": {},
        "users": [{"name": cluster_name, "user": {"token": token}}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def access_kubeconfig(access: ClusterAccess) -> str:
    """A kubeconfig for ``access`` (token or client certificate), for tools like istioctl.

    Contains the credential: hand it to a child process through memory, never a file on disk.

    Raises:
        KubeconfigError: ``access`` is an unresolved ``aad-exec`` entry (resolve it to a token).
    """
    if access.auth == "token" and access.token:
        return token_kubeconfig(
            cluster_name=access.context, server=access.server, ca_pem=access.ca_pem,
            token=access.token,
        )  # fmt: skip
    if access.client_cert_pem and access.client_key_pem:
        doc = yamlio.load(
            token_kubeconfig(
                cluster_name=access.context, server=access.server, ca_pem=access.ca_pem, token=""
            )
        )
        doc["users"][0]["user"] = {
            "client-certificate-data": base64.b64encode(access.client_cert_pem).decode(),
            "client-key-data": base64.b64encode(access.client_key_pem).decode(),
        }
        return str(yaml.safe_dump(doc, sort_keys=False))
    raise KubeconfigError(f"context {access.context!r}: no token or client certificate to use")
