"""Azure Resource Manager: the few resource types meshflow touches.

* ``Microsoft.ContainerService/managedClusters``: GET and ``listCluster{Admin,User}Credential``
  for clusters registered through the admin API (kubeconfigs returned base64, as ARM does).
  Registering a cluster also makes what Terraform leaves next to it (:meth:`Arm.register_cluster`):
  its add-on identities, and the App Gateway its AGIC add-on points to with that gateway's public
  IP (both kept as they are when they exist, so a restarted sandbox keeps what was written).
* ``Microsoft.Network/applicationGateways`` and ``publicIPAddresses``: GET, list (per resource
  group and per subscription, paged as ARM pages: ``{"value": [...], "nextLink": ...}``), and
  PUT as an ARM long-running operation: 201 (new) or 200 (update) with an
  ``Azure-AsyncOperation`` URL that answers ``InProgress`` ``lro_polls`` times, then
  ``Succeeded``. To keep SDK pollers fast the replies carry ``Retry-After-Ms`` (honoured by
  azure-core) instead of ARM's usual ``Retry-After: 10``. Inline SSL certificate
  ``data``/``password`` are never echoed back; trusted roots' ``data`` is.
* ETags, as Microsoft.Network has them: every network resource carries ``etag`` (``W/"<uuid>"``,
  new on each successful PUT, shared by the gateway's child resources) in its body and an
  ``ETag`` header on GET and PUT. A PUT is conditional on ``If-Match`` (a list of etags, or
  ``*`` = must exist) and ``If-None-Match`` (``*`` = must not exist); a failed condition is 412
  ``PreconditionFailed`` and writes nothing (see :class:`PreconditionFailedError`). Etags compare
  weakly (``W/"x"`` matches ``"x"``).
* ``Microsoft.ManagedIdentity/userAssignedIdentities``: GET/PUT, list (per resource group and
  per subscription, paged); ``clientId``/``principalId``
  are UUIDv5 of the resource id, so they are stable and agree wherever an identity is shown
  (an App Gateway's ``identity.userAssignedIdentities`` shows them too). MSI has no etags.
* ``Microsoft.Authorization/roleAssignments``: GET/PUT/DELETE at any scope, and the list of
  those that apply at a scope (``$filter`` ``atScope()``, ``principalId eq``, ``assignedTo()``);
  assigning the same role to the same principal at the same scope again is 409
  ``RoleAssignmentExists``.
* ``Microsoft.KeyVault/vaults``: GET, and ``accessPolicies/{add|replace|remove}`` (add merges
  permissions per principal, replace overwrites the listed principals' permissions, remove takes
  the listed permissions away and drops emptied entries). Every vault's ``vaultUri`` is the
  emulator's single data-plane vault.

Resource ids are the request paths; lookups are case-insensitive, as in ARM. Not enforced: RBAC
(roles and access policies are recorded, never checked), references to resources outside the
gateway (a frontend's public IP, a gateway IP configuration's subnet), and ARM's rule that a
gateway needs at least one listener, rule, backend pool and HTTP setting.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from .persistence import json_copy
from .server import HttpError, Request, Response, Route, route

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers/"
_NET_TYPES = r"Microsoft\.Network/(?P<type>applicationGateways|publicIPAddresses)"
_LISTED = (  # the types with list operations, per resource group and per subscription
    r"(?P<type>Microsoft\.Network/(?:applicationGateways|publicIPAddresses)"
    r"|Microsoft\.ManagedIdentity/userAssignedIdentities)"
)
_PERMISSION_KINDS = ("keys", "secrets", "certificates", "storage")
_GATEWAYS = "Microsoft.Network/applicationGateways"
_PUBLIC_IPS = "Microsoft.Network/publicIPAddresses"
_IDENTITIES = "Microsoft.ManagedIdentity/userAssignedIdentities"

SANDBOX_IP_PREFIX = "203.0.113."
"""Public IPs of the gateways registration makes: TEST-NET-3 (RFC 5737), never routed."""
LIST_PAGE_SIZE = 100
"""Resources per page of a list; the rest is behind ``nextLink``."""


def resource_id(subscription: str, resource_group: str, provider_type: str, name: str) -> str:
    """An ARM resource id: ``/subscriptions/.../resourceGroups/.../providers/{type}/{name}``."""
    group = f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
    return f"{group}/providers/{provider_type}/{name}"


def identity_ids(rid: str) -> tuple[str, str]:
    """Stable ``(clientId, principalId)`` of the managed identity ``rid``."""
    client, principal = (uuid.uuid5(uuid.NAMESPACE_URL, f"{rid.lower()}#{k}") for k in "cp")
    return str(client), str(principal)


def parse_resource_id(rid: str) -> tuple[str, str, str, str]:
    """``(subscription, resource group, provider/type, name)`` of a top-level resource id.

    Raises:
        ValueError: ``rid`` is not ``/subscriptions/s/resourceGroups/g/providers/p/t/name``.
    """
    parts = rid.split("/")
    keys = tuple(p.lower() for p in parts[1:6:2])
    if len(parts) != 9 or parts[0] or keys != ("subscriptions", "resourcegroups", "providers"):
        raise ValueError(f"not a top-level ARM resource id: {rid!r}")
    return parts[2], parts[4], f"{parts[6]}/{parts[7]}", parts[8]


def new_etag() -> str:
    """A fresh etag as Microsoft.Network writes them: ``W/"<uuid4>"``."""
    return f'W/"{uuid.uuid4()}"'


class PreconditionFailedError(HttpError):
    r"""412 ``PreconditionFailed`` in Microsoft.Network's shape, with one ``details`` entry.

    An etag mismatch reads (as NRP answers it)::

        {"error": {"code": "PreconditionFailed", "message": "Precondition failed.",
                   "details": [{"code": "PreconditionFailedEtagMismatch",
                                "message": "Etag provided in if-match header W/\"a\" does not
                                            match etag W/\"b\" of resource <id> in NRP data
                                            store."}]}}
    """

    def __init__(self, detail_code: str, detail: str) -> None:
        super().__init__(412, "PreconditionFailed", "Precondition failed.")
        self.detail_code = detail_code
        self.detail = detail

    def response(self) -> Response:
        """The 412 reply, ``details`` included."""
        reply = super().response()
        reply.body["error"]["details"] = [{"code": self.detail_code, "message": self.detail}]
        return reply


def _header(req: Request, name: str) -> str | None:
    return next((v for k, v in req.headers.items() if k.lower() == name.lower()), None)


def _etags_match(header: str, etag: str | None) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` list names ``etag`` (weak comparison) or ``*``."""
    tags = [t.strip() for t in header.split(",") if t.strip()]
    if "*" in tags:
        return True
    return etag is not None and any(t.removeprefix("W/") == etag.removeprefix("W/") for t in tags)


def check_preconditions(req: Request, rid: str, current: dict[str, Any] | None) -> None:
    """Evaluate a write's ``If-Match`` and ``If-None-Match`` against the stored resource.

    ``If-Match: <etag>[, <etag>...]`` needs the resource to exist with one of those etags,
    ``If-Match: *`` needs it to exist; ``If-None-Match: *`` needs it not to exist, and
    ``If-None-Match: <etag>`` needs its etag to differ. Without either header a write is
    unconditional.

    Raises:
        PreconditionFailedError: a condition does not hold (nothing is written).
    """
    etag = (current or {}).get("etag")
    if_match, if_none_match = _header(req, "If-Match"), _header(req, "If-None-Match")
    if if_match is not None:
        if current is None:
            raise PreconditionFailedError(
                "PreconditionFailed",
                f"If-Match {if_match} was given for resource {rid}, which does not exist.",
            )
        if not _etags_match(if_match, etag):
            raise PreconditionFailedError(
                "PreconditionFailedEtagMismatch",
                f"Etag provided in if-match header {if_match} does not match etag {etag} of "
                f"resource {current['id']} in NRP data store.",
            )
    if if_none_match is not None and current is not None and _etags_match(if_none_match, etag):
        raise PreconditionFailedError(
            "PreconditionFailed",
            f"If-None-Match {if_none_match} was given for resource {current['id']}, which "
            f"exists with etag {etag}.",
        )


def _body(req: Request) -> dict[str, Any]:
    body = req.json()
    if not isinstance(body, dict):
        raise HttpError(400, "InvalidRequestContent", "The request content must be a JSON object.")
    return body


def _location(body: dict[str, Any]) -> str:
    if not isinstance(body.get("location"), str) or not body["location"]:
        raise HttpError(
            400, "LocationRequired", "The location property is required for this definition."
        )
    return str(body["location"])


def _etag_header(body: dict[str, Any]) -> dict[str, str]:
    return {"ETag": str(body["etag"])} if body.get("etag") else {}


def _gateway_properties(rid: str, props: dict[str, Any], etag: str) -> None:
    """Store an App Gateway's child resources as Microsoft.Network does, after checking them.

    Every named child of a list property (``sslCertificates``, ``httpListeners``,
    ``backendHttpSettingsCollection``, ...) is kept as given, plus its ``id``
    (``<gateway>/<collection>/<name>``), ``type``, the gateway's ``etag`` and
    ``properties.provisioningState``; SSL certificates lose inline ``data`` and ``password``.

    Raises:
        HttpError: 400 ``DuplicateResourceName`` (two children of one collection share a
            name), ``ApplicationGatewaySslCertificateDataMustBeSpecified`` (an SSL certificate
            with neither ``data`` nor ``keyVaultSecretId``), ``InvalidResourceReference`` (a
            child refers to ``<gateway>/<collection>/<name>`` that the body does not hold).
    """
    children: dict[str, str] = {}
    for key, value in props.items():
        if not isinstance(value, list) or not all(
            isinstance(v, dict) and "name" in v for v in value
        ):
            continue
        stored = []
        for child in value:
            cid = f"{rid}/{key}/{child['name']}"
            if cid.lower() in children:
                message = f"Resource {rid} has two child resources with the same name "
                raise HttpError(400, "DuplicateResourceName", f"{message}({child['name']}).")
            children[cid.lower()] = cid
            child_props = {**(child.get("properties") or {}), "provisioningState": "Succeeded"}
            stored.append(
                {**child, "id": cid, "etag": etag, "type": f"{_GATEWAYS}/{key}"}
                | {"properties": child_props}
            )
        props[key] = stored
    for cert in props.get("sslCertificates") or []:
        cert_props = cert["properties"]
        if not cert_props.get("data") and not cert_props.get("keyVaultSecretId"):
            code = "ApplicationGatewaySslCertificateDataMustBeSpecified"
            raise HttpError(400, code, f"Data must be specified for Certificate {cert['id']}.")
        cert_props.pop("data", None)
        cert_props.pop("password", None)
    prefix = rid.lower() + "/"
    for cid in children.values():
        collection, name = cid[len(rid) + 1 :].split("/", 1)
        child = next(c for c in props[collection] if c["name"] == name)
        for ref in _references(child["properties"]):
            inner = ref.lower().removeprefix(prefix)
            if inner != ref.lower() and inner.count("/") == 1 and ref.lower() not in children:
                raise HttpError(
                    400,
                    "InvalidResourceReference",
                    f"Resource {ref} referenced by resource {cid} was not found. Please make "
                    "sure that the referenced resource exists, and that both resources are in "
                    "the same region.",
                )
    props.setdefault("operationalState", "Running")


def _references(value: Any) -> Iterator[str]:
    """Every ``{"id": ...}`` reference inside ``value`` (a child's properties)."""
    if isinstance(value, dict):
        if isinstance(value.get("id"), str):
            yield value["id"]
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


@dataclass
class Cluster:
    """A registered AKS cluster: its ARM body and kubeconfigs."""

    body: dict[str, Any]
    kubeconfigs: dict[str, str]


class Arm:
    """In-memory ARM resources.

    Args:
        tenant_id: The tenant identities and vaults belong to.
        lro_polls: ``InProgress`` answers an async operation gives before ``Succeeded``.
        lro_retry_after_ms: ``Retry-After-Ms`` sent with long-running operations.
        list_page_size: Resources per page of a list (:data:`LIST_PAGE_SIZE`).
    """

    def __init__(
        self,
        tenant_id: str,
        *,
        lro_polls: int = 1,
        lro_retry_after_ms: int = 50,
        list_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        if list_page_size < 1:
            raise ValueError(f"list_page_size must be at least 1 (got {list_page_size})")
        self.tenant_id = tenant_id
        self.lro_polls = lro_polls
        self.lro_headers = {"Retry-After-Ms": str(lro_retry_after_ms)}
        self.list_page_size = list_page_size
        self.resources: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, Cluster] = {}
        self.operations: dict[str, tuple[str, list[int]]] = {}

    def routes(self) -> list[Route]:
        """The ARM routes (paths are case-insensitive)."""
        aks = _RG + r"Microsoft\.ContainerService/managedClusters/(?P<name>[^/]+)"
        net = _RG + _NET_TYPES + r"/(?P<name>[^/]+)"
        msi = _RG + r"Microsoft\.ManagedIdentity/userAssignedIdentities/(?P<name>[^/]+)"
        vault = _RG + r"Microsoft\.KeyVault/vaults/(?P<name>[^/]+)"
        ops = r"/subscriptions/[^/]+/providers/Microsoft\.Network/locations/[^/]+/operations/"
        ops += r"(?P<op>[^/]+)"
        all_roles = r"(?P<scope>(?:/.*?)?)/providers/Microsoft\.Authorization/roleAssignments"
        roles = all_roles + r"/(?P<name>[^/]+)"
        table = [
            ("GET", aks, self._get_cluster),
            ("POST", aks + r"/listCluster(?P<kind>Admin|User)Credential", self._credentials),
            ("GET", net, self._get),
            ("PUT", net, self._put_network),
            ("GET", _RG + _LISTED, self._list),
            ("GET", _SUB + "/providers/" + _LISTED, self._list),
            ("GET", ops, self._operation),
            ("GET", msi, self._get),
            ("PUT", msi, self._put_identity),
            ("GET", vault, self._get),
            ("PUT", vault + r"/accessPolicies/(?P<kind>add|replace|remove)", self._access_policy),
            ("GET", all_roles, self._list_roles),
            ("GET", roles, self._get_role),
            ("PUT", roles, self._put_role),
            ("DELETE", roles, self._delete_role),
        ]
        return [
            route(method, path, fn, "arm", nocase=True, mutates=fn == self._operation)
            for method, path, fn in table
        ]

    def snapshot(self) -> dict[str, Any]:
        """Every resource, registered cluster and running operation, as JSON-ready data."""
        return {
            "resources": json_copy(self.resources),
            "clusters": {
                rid: {"body": json_copy(c.body), "kubeconfigs": dict(c.kubeconfigs)}
                for rid, c in self.clusters.items()
            },
            "operations": {op: [rid, polls[0]] for op, (rid, polls) in self.operations.items()},
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the resources, clusters and operations with a :meth:`snapshot`'s.

        Network resources saved before they had etags get one.
        """
        self.resources = data["resources"]
        for body in self.resources.values():
            if body["type"].startswith("Microsoft.Network/") and not body.get("etag"):
                body["etag"] = new_etag()
        self.clusters = {
            rid: Cluster(c["body"], c["kubeconfigs"]) for rid, c in data["clusters"].items()
        }
        self.operations = {op: (rid, [polls]) for op, (rid, polls) in data["operations"].items()}

    def _find(self, rid: str, m: re.Match[str]) -> dict[str, Any]:
        found = self.resources.get(rid.lower())
        if found is None:
            type_ = "/".join(rid.split("/providers/")[1].split("/")[:2])
            raise HttpError(
                404,
                "ResourceNotFound",
                f"The Resource '{type_}/{m['name']}' under resource group '{m['rg']}' was not "
                "found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return found

    def _get(self, req: Request, m: re.Match[str]) -> Response:
        body = self._find(req.path, m)
        if "vaultUri" in body["properties"]:
            body["properties"]["vaultUri"] = f"{req.base_url}/"  # the one data-plane vault
        return Response(200, json_copy(body), _etag_header(body))

    def _store(
        self, rid: str, location: str, props: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        provider, type_, name = rid.split("/providers/")[1].split("/")
        body = {"id": rid, "name": name, "type": f"{provider}/{type_}", "location": location}
        self.resources[rid.lower()] = {**body, **extra, "properties": props}
        return self.resources[rid.lower()]

    # -- managed clusters -------------------------------------------------------------------

    def register_cluster(
        self, subscription: str, resource_group: str, name: str, spec: dict[str, Any]
    ) -> None:
        """Register an AKS cluster, with what Terraform leaves next to it.

        ``spec`` holds the admin API's fields: location, admin_kubeconfig, user_kubeconfig, fqdn,
        aad, and optionally application_gateway_id and kubernetes_version. The cluster's body
        and kubeconfigs are replaced; its add-on identities (in the node resource group
        ``MC_<group>_<name>_<location>``) and the App Gateway its AGIC add-on points to are made
        when missing and otherwise kept as they are, so registering again (a restarted sandbox)
        loses nothing written to them. Without ``application_gateway_id`` the gateway is the
        sample's ``aks-appgw-<location>`` in the node resource group (see
        :meth:`ensure_gateway`).

        Raises:
            ValueError: ``application_gateway_id`` is not an App Gateway resource id.
        """
        location = str(spec.get("location") or "westeurope")
        rid = resource_id(
            subscription, resource_group, "Microsoft.ContainerService/managedClusters", name
        )
        node_rg = f"MC_{resource_group}_{name}_{location}"
        digest = hashlib.sha256(rid.lower().encode()).hexdigest()[:8]

        def identity(uai_name: str) -> dict[str, str]:
            uai = resource_id(subscription, node_rg, _IDENTITIES, uai_name)
            if uai.lower() not in self.resources:
                self._store_identity(uai, location, {})
            client, principal = identity_ids(uai)
            return {"resourceId": uai, "clientId": client, "objectId": principal}

        gateway = str(
            spec.get("application_gateway_id")
            or resource_id(subscription, node_rg, _GATEWAYS, f"aks-appgw-{location}")
        )
        subnet = f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers"
        subnet += f"/Microsoft.Network/virtualNetworks/{name}-vnet/subnets/AppGateway"
        self.ensure_gateway(gateway, location, subnet)
        version = str(spec.get("kubernetes_version") or "1.30.6")
        pool = {
            "name": "nodepool1",
            "count": 2,
            "mode": "System",
            "osType": "Linux",
            "orchestratorVersion": version,
        }
        addons = {
            "ingressApplicationGateway": {
                "enabled": True,
                "config": {
                    "applicationGatewayId": gateway,
                    "effectiveApplicationGatewayId": gateway,
                },
                "identity": identity(f"ingressapplicationgateway-{name}"),
            },
            "azureKeyvaultSecretsProvider": {
                "enabled": True,
                "config": {"enableSecretRotation": "false", "rotationPollInterval": "2m"},
                "identity": identity(f"azurekeyvaultsecretsprovider-{name}"),
            },
        }
        props: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "powerState": {"code": "Running"},
            "kubernetesVersion": version,
            "dnsPrefix": f"{name}-dns",
            "fqdn": spec.get("fqdn") or f"{name}-dns-{digest}.hcp.{location}.azmk8s.io",
            "agentPoolProfiles": [pool],
            "addonProfiles": addons,
            "identityProfile": {"kubeletidentity": identity(f"{name}-agentpool")},
            "nodeResourceGroup": node_rg,
            "enableRBAC": True,
        }
        if spec.get("aad"):
            props["aadProfile"] = {
                "managed": True,
                "enableAzureRBAC": True,
                "tenantID": self.tenant_id,
            }
        principal = identity_ids(rid)[1]
        body = {
            "id": rid,
            "name": name,
            "type": "Microsoft.ContainerService/ManagedClusters",
            "location": location,
            "identity": {
                "type": "SystemAssigned",
                "principalId": principal,
                "tenantId": self.tenant_id,
            },
            "properties": props,
        }
        admin = str(spec.get("admin_kubeconfig") or "")
        kubeconfigs = {"admin": admin, "user": str(spec.get("user_kubeconfig") or admin)}
        self.clusters[rid.lower()] = Cluster(body, kubeconfigs)

    def _cluster(self, req: Request, m: re.Match[str]) -> Cluster:
        rid = req.path.rsplit("/listCluster", 1)[0]
        if rid.lower() not in self.clusters:
            self._find(rid, m)  # raises the 404
        return self.clusters[rid.lower()]

    def _get_cluster(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, self._cluster(req, m).body)

    def _credentials(self, req: Request, m: re.Match[str]) -> Response:
        kind = m["kind"].lower()
        text = self._cluster(req, m).kubeconfigs[kind]
        if not text:
            raise HttpError(400, "BadRequest", "No kubeconfig was registered for this cluster.")
        value = base64.b64encode(text.encode()).decode()
        return Response(200, {"kubeconfigs": [{"name": f"cluster{kind.title()}", "value": value}]})

    # -- the App Gateway an AGIC add-on points to ----------------------------------------------

    def ensure_gateway(self, gateway_id: str, location: str, subnet_id: str) -> None:
        """Make App Gateway ``gateway_id`` and its public IP as Terraform leaves them, if missing.

        The gateway: SKU Standard_v2 (capacity 2), gateway IP configuration
        ``appGatewayIpConfig`` in ``subnet_id``, frontend IP configuration
        ``appGatewayFrontendIP`` on public IP ``<gateway>-appgwpip`` (same resource group; its
        ``ipAddress`` from 203.0.113.0/24, distinct per gateway, derived from the IP's id),
        frontend ports ``httpPort`` (80) and ``httpsPort`` (443); no listeners, rules, pools,
        settings, probes or certificates (AGIC and meshflow add those). An existing gateway
        or public IP is left exactly as it is (etag included).

        Raises:
            ValueError: ``gateway_id`` is not an App Gateway resource id, or 203.0.113.0/24
                has no free address left.
        """
        sub, group, type_, name = parse_resource_id(gateway_id)
        if type_.lower() != _GATEWAYS.lower():
            raise ValueError(f"application_gateway_id is not an App Gateway: {gateway_id!r}")
        pip = resource_id(sub, group, _PUBLIC_IPS, f"{name}-appgwpip")
        frontend = f"{gateway_id}/frontendIPConfigurations/appGatewayFrontendIP"
        if pip.lower() not in self.resources:
            ip_props = {
                "provisioningState": "Succeeded",
                "resourceGuid": str(uuid.uuid4()),
                "ipAddress": self._sandbox_ip(pip),
                "publicIPAddressVersion": "IPv4",
                "publicIPAllocationMethod": "Static",
                "idleTimeoutInMinutes": 4,
                "ipTags": [],
                "ipConfiguration": {"id": frontend},
            }
            sku = {"name": "Standard", "tier": "Regional"}
            self._store(pip, location, ip_props, etag=new_etag(), sku=sku, tags={})
        if gateway_id.lower() in self.resources:
            return
        etag = new_etag()
        props: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "resourceGuid": str(uuid.uuid4()),
            "sku": {"name": "Standard_v2", "tier": "Standard_v2", "capacity": 2},
            "operationalState": "Running",
            "gatewayIPConfigurations": [
                {"name": "appGatewayIpConfig", "properties": {"subnet": {"id": subnet_id}}}
            ],
            "sslCertificates": [],
            "trustedRootCertificates": [],
            "frontendIPConfigurations": [
                {
                    "name": "appGatewayFrontendIP",
                    "properties": {
                        "privateIPAllocationMethod": "Dynamic",
                        "publicIPAddress": {"id": pip},
                    },
                }
            ],
            "frontendPorts": [
                {"name": "httpPort", "properties": {"port": 80}},
                {"name": "httpsPort", "properties": {"port": 443}},
            ],
            "backendAddressPools": [],
            "backendHttpSettingsCollection": [],
            "httpListeners": [],
            "probes": [],
            "requestRoutingRules": [],
        }
        _gateway_properties(gateway_id, props, etag)
        self._store(gateway_id, location, props, etag=etag, tags={})

    def _sandbox_ip(self, rid: str) -> str:
        taken = {r["properties"].get("ipAddress") for r in self.resources.values()}
        start = int.from_bytes(hashlib.sha256(rid.lower().encode()).digest()[:4], "big")
        for k in range(254):
            candidate = f"{SANDBOX_IP_PREFIX}{(start + k) % 254 + 1}"
            if candidate not in taken:
                return candidate
        raise ValueError(f"no free address left in {SANDBOX_IP_PREFIX}0/24 for {rid}")

    # -- network (long-running PUTs, lists) ---------------------------------------------------

    def _put_network(self, req: Request, m: re.Match[str]) -> Response:
        body, rid = _body(req), req.path
        previous = self.resources.get(rid.lower())
        check_preconditions(req, rid, previous)
        location = _location(body)
        etag = new_etag()
        props = json_copy(dict(body.get("properties") or {}))
        extra = {
            k: v
            for k, v in body.items()
            if k not in ("id", "name", "type", "location", "etag", "properties")
        }
        if m["type"].lower() == "applicationgateways":
            _gateway_properties(rid, props, etag)
            if "identity" in body:
                extra["identity"] = self._gateway_identity(rid, body["identity"])
        else:
            self._public_ip_properties(rid, props, previous)
        guid = (previous or {}).get("properties", {}).get("resourceGuid") or str(uuid.uuid4())
        props.update(provisioningState="Updating", resourceGuid=guid)
        stored = self._store(rid, location, props, **extra, etag=etag)
        op = str(uuid.uuid4())
        self.operations[op] = (rid, [self.lro_polls])
        api = req.query.get("api-version", "")
        url = f"{req.base_url}/subscriptions/{m['sub']}/providers/Microsoft.Network/locations"
        url += f"/{stored['location']}"
        headers = {
            "Azure-AsyncOperation": f"{url}/operations/{op}?api-version={api}",
            **self.lro_headers,
            **_etag_header(stored),
        }
        return Response(201 if previous is None else 200, json_copy(stored), headers)

    def _list(self, req: Request, m: re.Match[str]) -> Response:
        """App Gateways, public IPs or identities of a subscription or resource group, paged."""
        sub, group = m["sub"].lower(), (m.groupdict().get("rg") or "").lower()
        wanted = m["type"].lower()

        def listed(body: dict[str, Any]) -> bool:
            if body["type"].lower() != wanted:
                return False
            rsub, rgroup, _, _ = parse_resource_id(body["id"])
            return rsub.lower() == sub and (not group or rgroup.lower() == group)

        return self._page(req, [b for b in self.resources.values() if listed(b)])

    def _page(self, req: Request, found: list[dict[str, Any]]) -> Response:
        """One page of a list as ARM pages it: ``{"value": [...], "nextLink": ...}``.

        Resources ordered by id, :attr:`list_page_size` per page; ``nextLink`` (absent on the
        last page) is the same URL with its ``api-version``, ``$filter`` and an opaque
        ``$skiptoken`` (read in any case, as ``$skipToken`` too).

        Raises:
            HttpError: 400 ``InvalidSkipToken`` for a skip token this list did not make.
        """
        found = sorted(found, key=lambda b: str(b["id"]).lower())
        query = {k.lower(): v for k, v in req.query.items()}
        token = query.get("$skiptoken") or ""
        try:
            start = int(base64.b64decode(token, altchars=b"-_", validate=True).decode() or "0")
            if start < 0:
                raise ValueError(start)
        except ValueError as exc:
            message = f"The skip token {token!r} is invalid."
            raise HttpError(400, "InvalidSkipToken", message) from exc
        end = start + self.list_page_size
        page: dict[str, Any] = {"value": [json_copy(b) for b in found[start:end]]}
        if end < len(found):
            kept = {k: v for k, v in req.query.items() if k.lower() in ("api-version", "$filter")}
            kept["$skiptoken"] = base64.urlsafe_b64encode(str(end).encode()).decode()
            page["nextLink"] = f"{req.base_url}{quote(req.path)}?{urlencode(kept, safe='$')}"
        return Response(200, page)

    def _public_ip_properties(
        self, rid: str, props: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        ip = (previous or {}).get("properties", {}).get("ipAddress")
        taken = {r["properties"].get("ipAddress") for r in self.resources.values()}
        digest = hashlib.sha256(rid.lower().encode()).digest()
        for i in range(0, 30, 3):
            if (
                ip is None
                and (candidate := f"20.{digest[i]}.{digest[i + 1]}.{digest[i + 2] % 254 + 1}")
                not in taken
            ):
                ip = candidate
        props.update(ipAddress=ip)
        props.setdefault("publicIPAllocationMethod", "Static")
        props.setdefault("publicIPAddressVersion", "IPv4")
        if previous is not None and "ipConfiguration" in previous["properties"]:
            props.setdefault("ipConfiguration", previous["properties"]["ipConfiguration"])

    def _operation(self, req: Request, m: re.Match[str]) -> Response:
        if m["op"] not in self.operations:
            raise HttpError(404, "OperationNotFound", f"Operation {m['op']} was not found.")
        rid, polls = self.operations[m["op"]]
        if polls[0] > 0:
            polls[0] -= 1
            return Response(200, {"status": "InProgress"}, dict(self.lro_headers))
        if rid.lower() in self.resources:
            self.resources[rid.lower()]["properties"]["provisioningState"] = "Succeeded"
        return Response(200, {"status": "Succeeded"})

    # -- managed identities -----------------------------------------------------------------

    def _store_identity(self, rid: str, location: str, tags: dict[str, Any]) -> dict[str, Any]:
        client, principal = identity_ids(rid)
        props = {"tenantId": self.tenant_id, "principalId": principal, "clientId": client}
        return self._store(rid, location, {**props, "isolationScope": "None"}, tags=tags)

    def _put_identity(self, req: Request, m: re.Match[str]) -> Response:
        body = _body(req)
        existed = req.path.lower() in self.resources
        stored = self._store_identity(req.path, _location(body), body.get("tags") or {})
        return Response(200 if existed else 201, stored)

    def _gateway_identity(self, gateway_id: str, identity: Any) -> dict[str, Any]:
        """An App Gateway's ``identity`` as ARM stores it: user-assigned ones filled in.

        Each ``userAssignedIdentities`` key must be an existing identity; its value becomes
        that identity's ``principalId`` and ``clientId``.

        Raises:
            HttpError: 400 ``InvalidIdentity`` (not an object), ``CannotSetResourceIdentity``
                (a system-assigned type: gateways take user-assigned identities only),
                ``FailedIdentityOperation`` (an identity that does not exist).
        """
        if not isinstance(identity, dict):
            raise HttpError(400, "InvalidIdentity", "identity must be an object")
        if "systemassigned" in str(identity.get("type") or "").lower().replace(" ", ""):
            raise HttpError(
                400,
                "CannotSetResourceIdentity",
                f"Resource type '{_GATEWAYS}' does not support creation of 'SystemAssigned' "
                "resource identity. The supported types are 'UserAssigned'.",
            )
        filled: dict[str, dict[str, str]] = {}
        for uai in identity.get("userAssignedIdentities") or {}:
            found = self.resources.get(str(uai).lower())
            if found is None or found["type"].lower() != _IDENTITIES.lower():
                raise HttpError(
                    400,
                    "FailedIdentityOperation",
                    f"Identity operation for resource '{gateway_id}' failed with error 'Failed "
                    f"to perform resource identity operation. Status: 'NotFound'. Resource "
                    f"'{uai}' was not found.'.",
                )
            p = found["properties"]
            filled[uai] = {"principalId": p["principalId"], "clientId": p["clientId"]}
        return {**identity, "userAssignedIdentities": filled} if filled else dict(identity)

    # -- key vaults ---------------------------------------------------------------------------

    def register_vault(
        self, subscription: str, resource_group: str, name: str, spec: dict[str, Any]
    ) -> None:
        """Register a Key Vault resource (fields: location, tenant_id, sku).

        ``sku`` is ``standard`` (default) or ``premium``. A vault already registered is kept
        as it is (its access policies included), so registering again on every start of a
        restarted emulator loses nothing.

        Raises:
            ValueError: ``sku`` is neither ``standard`` nor ``premium``.
        """
        rid = resource_id(subscription, resource_group, "Microsoft.KeyVault/vaults", name)
        sku = str(spec.get("sku") or "standard").lower()
        if sku not in ("standard", "premium"):
            raise ValueError(f"a vault's sku is standard or premium (got {sku!r})")
        if rid.lower() in self.resources:
            return
        props: dict[str, Any] = {
            "sku": {"family": "A", "name": sku},
            "tenantId": spec.get("tenant_id") or self.tenant_id,
            "accessPolicies": [],
            "vaultUri": "",
            "enableSoftDelete": True,
            "softDeleteRetentionInDays": 90,
            "enableRbacAuthorization": False,
            "provisioningState": "Succeeded",
        }
        self._store(rid, str(spec.get("location") or "westeurope"), props, tags={})

    def _access_policy(self, req: Request, m: re.Match[str]) -> Response:
        vault = self._find(req.path.rsplit("/accessPolicies/", 1)[0], m)
        entries = (_body(req).get("properties") or {}).get("accessPolicies")
        if not isinstance(entries, list) or not entries:
            raise HttpError(
                400, "BadRequest", "properties.accessPolicies must be a non-empty list."
            )
        current: list[dict[str, Any]] = vault["properties"]["accessPolicies"]
        for entry in entries:
            if (
                not isinstance(entry, dict)
                or not entry.get("objectId")
                or not entry.get("tenantId")
            ):
                raise HttpError(
                    400, "BadRequest", "Each access policy needs tenantId and objectId."
                )
            _apply_policy(current, entry, m["kind"].lower())
        current[:] = [p for p in current if any(p["permissions"].values())]
        kind = m["kind"].lower()
        echo = {
            "id": f"{vault['id']}/accessPolicies/{kind}",
            "name": kind,
            "location": vault["location"],
        }
        echo["type"] = "Microsoft.KeyVault/vaults/accessPolicies"
        return Response(200, {**echo, "properties": {"accessPolicies": entries}})

    # -- role assignments ---------------------------------------------------------------------

    def _list_roles(self, req: Request, m: re.Match[str]) -> Response:
        """Role assignments that apply at a scope (``role_assignments.list_for_scope``), paged.

        Without a filter: those at, above and below the scope. ``$filter`` takes
        ``atScope()`` (at or above only), ``principalId eq '<id>'`` and ``assignedTo('<id>')``,
        joined by ``and``.

        Raises:
            HttpError: 400 ``BadRequest`` for another filter.
        """
        scope = ("/" + m["scope"].strip("/")).lower().rstrip("/")
        text = {k.lower(): v for k, v in req.query.items()}.get("$filter") or ""
        at_scope, principal = False, None
        for term in (t.strip() for t in re.split(r"\s+and\s+", text, flags=re.I) if t.strip()):
            match = re.fullmatch(r"(?:principalId\s+eq\s+|assignedTo\()'([^']+)'\)?", term, re.I)
            if term.replace(" ", "").lower() == "atscope()":
                at_scope = True
            elif match:
                principal = match[1].lower()
            else:
                message = f"The emulator does not support the filter {text!r}."
                raise HttpError(400, "BadRequest", message)

        def applies(body: dict[str, Any]) -> bool:
            if not body["type"].endswith("roleAssignments"):
                return False
            props = body["properties"]
            held = props["scope"].lower().rstrip("/")
            above = scope == held or scope.startswith(held + "/")
            below = held.startswith(scope + "/") and not at_scope
            return (above or below) and principal in (None, props["principalId"].lower())

        return self._page(req, [b for b in self.resources.values() if applies(b)])

    def _get_role(self, req: Request, m: re.Match[str]) -> Response:
        found = self.resources.get(_role_id(m).lower())
        if found is None:
            raise HttpError(
                404, "RoleAssignmentNotFound", f"The role assignment '{m['name']}' is not found."
            )
        return Response(200, found)

    def _put_role(self, req: Request, m: re.Match[str]) -> Response:
        try:
            uuid.UUID(m["name"])
        except ValueError as exc:
            message = f"The role assignment ID '{m['name']}' is not valid. It must be a GUID."
            raise HttpError(400, "InvalidRoleAssignmentId", message) from exc
        props = _body(req).get("properties") or {}
        role, principal = props.get("roleDefinitionId"), props.get("principalId")
        if not isinstance(role, str) or not isinstance(principal, str) or not role or not principal:
            message = "properties.roleDefinitionId and properties.principalId are required."
            raise HttpError(400, "InvalidRoleAssignmentRequest", message)
        rid, scope = _role_id(m), _role_id(m).split("/providers/Microsoft.Authorization/")[0]
        key = (scope.lower(), role.rsplit("/", 1)[-1].lower(), principal.lower())
        for other in self.resources.values():
            p = other["properties"]
            if other["type"].endswith("roleAssignments") and key == (
                p["scope"].lower(),
                p["roleDefinitionId"].rsplit("/", 1)[-1].lower(),
                p["principalId"].lower(),
            ):
                raise HttpError(409, "RoleAssignmentExists", "The role assignment already exists.")
        if rid.lower() in self.resources:
            message = (
                "Tenant ID, application ID, principal ID, and scope are not allowed to be updated."
            )
            raise HttpError(400, "RoleAssignmentUpdateNotPermitted", message)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        props = {
            "roleDefinitionId": role,
            "principalId": principal,
            "principalType": props.get("principalType") or "ServicePrincipal",
            "scope": scope,
            **{k: props.get(k) for k in ("condition", "conditionVersion", "description")},
            "createdOn": stamp,
            "updatedOn": stamp,
        }
        body = {
            "id": rid,
            "type": "Microsoft.Authorization/roleAssignments",
            "name": m["name"],
            "properties": props,
        }
        self.resources[rid.lower()] = body
        return Response(201, body)

    def _delete_role(self, req: Request, m: re.Match[str]) -> Response:
        found = self.resources.pop(_role_id(m).lower(), None)
        return Response(200, found) if found else Response(204)


def _role_id(m: re.Match[str]) -> str:
    scope = "/" + m["scope"].strip("/") if m["scope"].strip("/") else ""
    return f"{scope}/providers/Microsoft.Authorization/roleAssignments/{m['name']}"


def _apply_policy(current: list[dict[str, Any]], entry: dict[str, Any], kind: str) -> None:
    """Apply one access-policy entry to the vault's list for an add/replace/remove operation."""

    def principal(p: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(p.get(k) or "").lower() for k in ("tenantId", "objectId", "applicationId"))

    wanted = {
        k: [str(x).lower() for x in (entry.get("permissions") or {}).get(k) or []]
        for k in _PERMISSION_KINDS
    }
    match = next((p for p in current if principal(p) == principal(entry)), None)
    if match is None:
        if kind != "remove":
            current.append({**entry, "permissions": wanted})
        return
    for k, want in wanted.items():
        have = match["permissions"].get(k) or []
        if kind == "add":
            match["permissions"][k] = have + [p for p in want if p not in have]
        else:
            match["permissions"][k] = (
                want if kind == "replace" else [p for p in have if p not in want]
            )
