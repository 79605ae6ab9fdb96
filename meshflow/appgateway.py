"""The App Gateway as ARM's JSON: what meshflow adds to it (steps 17-18) and what AGIC writes.

Pure functions over the REST shape of ``Microsoft.Network/applicationGateways`` (camelCase,
``properties`` nested), so they are tested against documents built from ARM's schema and the
same code reads what the SDK returns (its models are that JSON). No SDK, no I/O.

meshflow owns three things on the gateway and compares each by name and content (never by
object identity), so an unchanged gateway costs no write: the user-assigned identity
``appgw-id``, the SSL certificate ``frontend-certificate`` referencing the **unversioned**
Key Vault secret id (renewals roll without a write to the gateway), and the trusted root
``root-certificate`` holding the Istio root. Everything else (AGIC's listeners, pools, settings,
probes and rules) is left exactly as it is.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping, Sequence
from typing import Any

FRONTEND_CERTIFICATE = "frontend-certificate"
TRUSTED_ROOT_CERTIFICATE = "root-certificate"
GATEWAY_IDENTITY = "appgw-id"
MANAGED_IDENTITY_OPERATOR = "f1a07417-d97a-45cb-824c-7a7467783830"
"""Built-in role "Managed Identity Operator": AGIC needs it over the gateway's identity."""

Json = dict[str, Any]


def parse_resource_id(rid: str) -> tuple[str, str, str]:
    """``(subscription, resource group, name)`` of an ARM resource id.

    Raises:
        ValueError: not a resource id of the form ``/subscriptions/s/resourceGroups/g/.../name``.
    """
    parts = rid.strip("/").split("/")
    lower = [p.lower() for p in parts]
    try:
        sub = parts[lower.index("subscriptions") + 1]
        group = parts[lower.index("resourcegroups") + 1]
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{rid!r} is not an ARM resource id") from exc
    if len(parts) < 8 or not sub or not group or not parts[-1]:
        raise ValueError(f"{rid!r} is not an ARM resource id")
    return sub, group, parts[-1]


def unversioned_secret_id(vault_url: str, name: str = FRONTEND_CERTIFICATE) -> str:
    """``https://<vault>/secrets/<name>``: the secret id an App Gateway follows across renewals."""
    return f"{vault_url.rstrip('/')}/secrets/{name}"


def certificate_data(pem: str) -> str:
    """A trusted root certificate's ``data``: the PEM file, base64.

    As ``az network application-gateway root-cert create --cert-file root-cert.pem`` sends it.
    """
    return base64.b64encode(pem.encode()).decode()


def _certificate_ders(data: str) -> list[bytes] | None:
    """The DER certificates, in order, inside a trusted root's ``data``; None if it holds none.

    ``data`` is base64 of a PEM bundle or of one DER file.
    """
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        return None
    text = raw.decode("ascii", errors="replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text:
        return [raw] if raw else None
    found = []
    for part in text.split(begin)[1:]:
        try:
            found.append(base64.b64decode("".join(part.split(end, 1)[0].split()), validate=True))
        except ValueError:
            return None
    return found


def certificate_der(data: str) -> bytes | None:
    """The (first) DER certificate inside a trusted root's ``data`` (base64 of a PEM or a DER)."""
    ders = _certificate_ders(data)
    return ders[0] if ders else None


def certificate_ders(data: str) -> frozenset[bytes] | None:
    """Every DER certificate inside a trusted root's ``data`` (a PEM bundle or one DER file).

    During a root rotation the trusted root holds the old and the new root (one PEM file with
    both), so gateways are compared by the set of certificates, not the first one.
    """
    ders = _certificate_ders(data)
    return frozenset(ders) if ders is not None else None


def _named(items: Sequence[Mapping[str, Any]] | None, name: str) -> Mapping[str, Any] | None:
    return next((i for i in items or () if i.get("name") == name), None)


def _props(item: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (item or {}).get("properties") or {}


def frontend_secret_id(gateway: Mapping[str, Any]) -> str | None:
    """The Key Vault secret id the gateway's ``frontend-certificate`` references, if any."""
    ssl = _props(_named(_props(gateway).get("sslCertificates"), FRONTEND_CERTIFICATE))
    value = ssl.get("keyVaultSecretId")
    return str(value) if value else None


def is_unversioned(secret_id: str) -> bool:
    """Whether ``https://<vault>/secrets/<name>[/<version>]`` names no version.

    Only an unversioned id makes the gateway pick up a renewed certificate by itself.
    """
    path = secret_id.split("://", 1)[-1].rstrip("/").split("/")
    return len(path) == 3 and path[1].lower() == "secrets"


def missing(
    gateway: Mapping[str, Any], *, identity_id: str, secret_id: str, root_pem: str
) -> list[str]:
    """What of meshflow's three things the gateway lacks or holds differently (names)."""
    props = _props(gateway)
    lacking = []
    identities = ((gateway.get("identity") or {}).get("userAssignedIdentities")) or {}
    if not any(k.lower() == identity_id.lower() for k in identities):
        lacking.append(f"identity {GATEWAY_IDENTITY}")
    ssl = _props(_named(props.get("sslCertificates"), FRONTEND_CERTIFICATE))
    if ssl.get("keyVaultSecretId") != secret_id:
        lacking.append(f"SSL certificate {FRONTEND_CERTIFICATE}")
    root = _props(_named(props.get("trustedRootCertificates"), TRUSTED_ROOT_CERTIFICATE))
    held = certificate_ders(str(root.get("data") or ""))
    if held is None or held != certificate_ders(certificate_data(root_pem)):
        lacking.append(f"trusted root certificate {TRUSTED_ROOT_CERTIFICATE}")
    return lacking


def with_meshflow_parts(
    gateway: Mapping[str, Any], *, identity_id: str, secret_id: str, root_pem: str
) -> Json:
    """The gateway with meshflow's three things set, everything else as it was.

    Read-only fields (``etag``, ``provisioningState`` ...) stay: ARM ignores them on PUT, and
    the request carries the etag in ``If-Match`` anyway.
    """
    body = copy.deepcopy(dict(gateway))
    identity = body.get("identity") or {}
    assigned = dict(identity.get("userAssignedIdentities") or {})
    if not any(k.lower() == identity_id.lower() for k in assigned):
        assigned[identity_id] = {}
    kind = str(identity.get("type") or "")
    kind = "SystemAssigned, UserAssigned" if "SystemAssigned" in kind else "UserAssigned"
    body["identity"] = {"type": kind, "userAssignedIdentities": assigned}
    props = body.setdefault("properties", {})
    props["sslCertificates"] = _replace(
        props.get("sslCertificates"), FRONTEND_CERTIFICATE, {"keyVaultSecretId": secret_id}
    )
    props["trustedRootCertificates"] = _replace(
        props.get("trustedRootCertificates"),
        TRUSTED_ROOT_CERTIFICATE,
        {"data": certificate_data(root_pem)},
    )
    return body


def _replace(items: Sequence[Mapping[str, Any]] | None, name: str, props: Json) -> list[Json]:
    kept = [dict(i) for i in items or () if i.get("name") != name]
    return [*kept, {"name": name, "properties": props}]


def frontend_public_ip_id(gateway: Mapping[str, Any]) -> str | None:
    """The public IP resource of the gateway's (first public) frontend IP configuration."""
    for config in _props(gateway).get("frontendIPConfigurations") or ():
        public = _props(config).get("publicIPAddress") or {}
        if public.get("id"):
            return str(public["id"])
    return None


def _refers(ref: Mapping[str, Any] | None, collection: str, name: str) -> bool:
    rid = str((ref or {}).get("id") or "")
    return rid.lower().endswith(f"/{collection}/{name}".lower())


def agic_problems(gateway: Mapping[str, Any], *, backend_host: str, probe_port: int) -> list[str]:
    """What AGIC has not yet written from the HTTPS Ingress (none: it has reconciled).

    A listener using ``frontend-certificate``; backend settings over HTTPS for ``backend_host``
    trusting ``root-certificate``; a probe for ``backend_host`` on ``probe_port``, path ``/``.
    """
    props = _props(gateway)
    problems = []
    listeners = props.get("httpListeners") or ()
    if not any(
        _refers(_props(li).get("sslCertificate"), "sslCertificates", FRONTEND_CERTIFICATE)
        for li in listeners
    ):
        problems.append(f"no HTTPS listener uses {FRONTEND_CERTIFICATE}")
    settings = [
        _props(s)
        for s in props.get("backendHttpSettingsCollection") or ()
        if _props(s).get("hostName") == backend_host
    ]
    trusting = [
        s
        for s in settings
        if str(s.get("protocol", "")).lower() == "https"
        and any(
            _refers(r, "trustedRootCertificates", TRUSTED_ROOT_CERTIFICATE)
            for r in s.get("trustedRootCertificates") or ()
        )
    ]
    if not trusting:
        problems.append(
            f"no HTTPS backend settings for {backend_host} trust {TRUSTED_ROOT_CERTIFICATE}"
        )
    probes = [
        _props(p)
        for p in props.get("probes") or ()
        if _props(p).get("host") == backend_host
        and _props(p).get("port") == probe_port
        and _props(p).get("path") == "/"
    ]
    if not probes:
        problems.append(f"no health probe for {backend_host} on port {probe_port}, path /")
    return problems


def agic_http_problems(gateway: Mapping[str, Any]) -> list[str]:
    """What AGIC has not yet written from the HTTP Ingress: a listener over HTTP, and a rule."""
    props = _props(gateway)
    problems = []
    if not any(
        str(_props(li).get("protocol", "")).lower() == "http"
        for li in props.get("httpListeners") or ()
    ):
        problems.append("no HTTP listener")
    if not props.get("requestRoutingRules"):
        problems.append("no request routing rule")
    return problems


def endpoint_problem(arm_ip: str, status_ip: str | None) -> str | None:
    """Why the Ingress status and ARM disagree on the public address (None: they agree)."""
    if status_ip is None:
        return "the Ingress status has no address yet"
    if status_ip != arm_ip:
        return (
            f"the Ingress status says {status_ip} but the App Gateway's public IP is {arm_ip}: "
            "another controller may own this Ingress, or the frontend changed"
        )
    return None


def ingress_ip(ingress: Mapping[str, Any] | None) -> str | None:
    """The address a controller wrote into an Ingress's status, if any."""
    entries = (((ingress or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress")
    for entry in entries or ():
        if entry.get("ip"):
            return str(entry["ip"])
    return None
