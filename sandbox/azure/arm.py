"""Azure Resource Manager: the few resource types meshflow touches.

* ``Microsoft.ContainerService/managedClusters``: GET and ``listCluster{Admin,User}Credential``
  for clusters registered through the admin API (kubeconfigs returned base64, as ARM does).
* ``Microsoft.Network/applicationGateways`` and ``publicIPAddresses``: GET, and PUT as an ARM
  long-running operation: 201 (new) or 200 (update) with an ``Azure-AsyncOperation`` URL that
  answers ``InProgress`` ``lro_polls`` times, then ``Succeeded``. To keep SDK pollers fast the
  replies carry ``Retry-After-Ms`` (honoured by azure-core) instead of ARM's usual
  ``Retry-After: 10``. Inline certificate ``data``/``password`` are never echoed back.
* ``Microsoft.ManagedIdentity/userAssignedIdentities``: GET/PUT; ``clientId``/``principalId``
  are UUIDv5 of the resource id, so they are stable and agree wherever an identity is shown.
* ``Microsoft.Authorization/roleAssignments``: GET/PUT/DELETE at any scope; assigning the same
  role to the same principal at the same scope again is 409 ``RoleAssignmentExists``.
* ``Microsoft.KeyVault/vaults``: GET, and ``accessPolicies/{add|replace|remove}`` (add merges
  permissions per principal, replace overwrites the listed principals' permissions, remove takes
  the listed permissions away and drops emptied entries). Every vault's ``vaultUri`` is the
  emulator's single data-plane vault.

Resource ids are the request paths; lookups are case-insensitive, as in ARM.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .persistence import json_copy
from .server import HttpError, Request, Response, Route, route

_RG = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
_PERMISSION_KINDS = ("keys", "secrets", "certificates", "storage")


def resource_id(subscription: str, resource_group: str, provider_type: str, name: str) -> str:
    """An ARM resource id: ``/subscriptions/.../resourceGroups/.../providers/{type}/{name}``."""
    group = f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
    return f"{group}/providers/{provider_type}/{name}"


def identity_ids(rid: str) -> tuple[str, str]:
    """Stable ``(clientId, principalId)`` of the managed identity ``rid``."""
    client, principal = (uuid.uuid5(uuid.NAMESPACE_URL, f"{rid.lower()}#{k}") for k in "cp")
    return str(client), str(principal)


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


@dataclass
class Cluster:
    """A registered AKS cluster: its ARM body and kubeconfigs."""

    body: dict[str, Any]
    kubeconfigs: dict[str, str]


class Arm:
    """In-memory ARM resources."""

    def __init__(self, tenant_id: str, *, lro_polls: int = 1, lro_retry_after_ms: int = 50) -> None:
        self.tenant_id = tenant_id
        self.lro_polls = lro_polls
        self.lro_headers = {"Retry-After-Ms": str(lro_retry_after_ms)}
        self.resources: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, Cluster] = {}
        self.operations: dict[str, tuple[str, list[int]]] = {}

    def routes(self) -> list[Route]:
        """The ARM routes (paths are case-insensitive)."""
        aks = _RG + r"Microsoft\.ContainerService/managedClusters/(?P<name>[^/]+)"
        net = (
            _RG
            + r"Microsoft\.Network/(?P<type>applicationGateways|publicIPAddresses)/(?P<name>[^/]+)"
        )
        msi = _RG + r"Microsoft\.ManagedIdentity/userAssignedIdentities/(?P<name>[^/]+)"
        vault = _RG + r"Microsoft\.KeyVault/vaults/(?P<name>[^/]+)"
        ops = r"/subscriptions/[^/]+/providers/Microsoft\.Network/locations/[^/]+/operations/"
        ops += r"(?P<op>[^/]+)"
        roles = r"(?P<scope>(?:/.*?)?)/providers/Microsoft\.Authorization/roleAssignments/"
        roles += r"(?P<name>[^/]+)"
        table = [
            ("GET", aks, self._get_cluster),
            ("POST", aks + r"/listCluster(?P<kind>Admin|User)Credential", self._credentials),
            ("GET", net, self._get),
            ("PUT", net, self._put_network),
            ("GET", ops, self._operation),
            ("GET", msi, self._get),
            ("PUT", msi, self._put_identity),
            ("GET", vault, self._get),
            ("PUT", vault + r"/accessPolicies/(?P<kind>add|replace|remove)", self._access_policy),
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
        """Replace the resources, clusters and operations with a :meth:`snapshot`'s."""
        self.resources = data["resources"]
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
        return Response(200, body)

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
        """Register an AKS cluster.

        ``spec`` holds the admin API's fields: location, admin_kubeconfig, user_kubeconfig, fqdn,
        aad, and optionally application_gateway_id and kubernetes_version.
        """
        location = str(spec.get("location") or "westeurope")
        rid = resource_id(
            subscription, resource_group, "Microsoft.ContainerService/managedClusters", name
        )
        node_rg = f"MC_{resource_group}_{name}_{location}"
        digest = hashlib.sha256(rid.lower().encode()).hexdigest()[:8]

        def identity(uai_name: str) -> dict[str, str]:
            uai = resource_id(
                subscription, node_rg, "Microsoft.ManagedIdentity/userAssignedIdentities", uai_name
            )
            self._store_identity(uai, location, {})
            client, principal = identity_ids(uai)
            return {"resourceId": uai, "clientId": client, "objectId": principal}

        gateway = spec.get("application_gateway_id") or resource_id(
            subscription, node_rg, "Microsoft.Network/applicationGateways", f"{name}-appgw"
        )
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

    # -- network (long-running PUTs) --------------------------------------------------------

    def _put_network(self, req: Request, m: re.Match[str]) -> Response:
        body, rid = _body(req), req.path
        previous = self.resources.get(rid.lower())
        props = dict(body.get("properties") or {})
        if m["type"].lower() == "applicationgateways":
            self._gateway_properties(rid, props)
        else:
            self._public_ip_properties(rid, props, previous)
        guid = (previous or {}).get("properties", {}).get("resourceGuid") or str(uuid.uuid4())
        props.update(provisioningState="Updating", resourceGuid=guid)
        extra = {k: v for k, v in body.items() if k not in ("id", "name", "type", "location")}
        extra.pop("properties", None)
        if "identity" in body:
            extra["identity"] = self._fill_identity(body["identity"])
        stored = self._store(rid, _location(body), props, **extra, etag=f'W/"{uuid.uuid4()}"')
        op = str(uuid.uuid4())
        self.operations[op] = (rid, [self.lro_polls])
        api = req.query.get("api-version", "")
        url = f"{req.base_url}/subscriptions/{m['sub']}/providers/Microsoft.Network/locations"
        url += f"/{stored['location']}"
        headers = {
            "Azure-AsyncOperation": f"{url}/operations/{op}?api-version={api}",
            **self.lro_headers,
        }
        return Response(201 if previous is None else 200, stored, headers)

    def _gateway_properties(self, rid: str, props: dict[str, Any]) -> None:
        for key, value in props.items():
            if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
                props[key] = [
                    {
                        **child,
                        "id": f"{rid}/{key}/{child['name']}",
                        "type": f"Microsoft.Network/applicationGateways/{key}",
                        "properties": {
                            **(child.get("properties") or {}),
                            "provisioningState": "Succeeded",
                        },
                    }
                    for child in value
                ]
        for cert in props.get("sslCertificates") or []:
            cert_props = cert["properties"]
            if not cert_props.get("data") and not cert_props.get("keyVaultSecretId"):
                code = "ApplicationGatewaySslCertificateDataMustBeSpecified"
                raise HttpError(400, code, f"Data must be specified for Certificate {cert['id']}.")
            cert_props.pop("data", None)
            cert_props.pop("password", None)
        props.setdefault("operationalState", "Running")

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

    @staticmethod
    def _fill_identity(identity: Any) -> Any:
        if not isinstance(identity, dict):
            raise HttpError(400, "InvalidIdentity", "identity must be an object")
        assigned = identity.get("userAssignedIdentities") or {}
        filled = {
            rid: dict(zip(("clientId", "principalId"), identity_ids(rid), strict=True))
            for rid in assigned
        }
        return {**identity, "userAssignedIdentities": filled} if assigned else identity

    # -- key vaults ---------------------------------------------------------------------------

    def register_vault(
        self, subscription: str, resource_group: str, name: str, spec: dict[str, Any]
    ) -> None:
        """Register a Key Vault resource (fields: location, tenant_id)."""
        rid = resource_id(subscription, resource_group, "Microsoft.KeyVault/vaults", name)
        props: dict[str, Any] = {
            "sku": {"family": "A", "name": "standard"},
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
