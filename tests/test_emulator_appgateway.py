"""App Gateways as meshflow and AGIC write them, through the real SDK clients.

Etags (a new one on every write, 412 on a stale ``If-Match``), lists (per resource group and
subscription, paged), the gateway's identity, certificates and AGIC's parts round-tripped as
given, and the gateway and public IP every registered cluster comes with (kept when it is
registered again, as a restarted sandbox does).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse
from azure.identity import ClientSecretCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import (
    AccessPolicyEntry,
    AccessPolicyUpdateKind,
    Permissions,
    VaultAccessPolicyParameters,
    VaultAccessPolicyProperties,
)
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network.models import ApplicationGateway

from sandbox import environment as env
from sandbox.azure import AzureEmulator
from sandbox.azure.arm import Arm, resource_id
from tests.emulator_fixtures import SUBSCRIPTION, arm_kwargs, emulator_credential, new_emulator

pytestmark = pytest.mark.emulator
RG = "rg-appgw"
ETAG = re.compile(r'W/"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"')
MANAGED_IDENTITY_OPERATOR = "f1a07417-d97a-45cb-824c-7a7467783830"
ROOT_DER_B64 = "MIIBszCCAVmgAwIBAgIUQ2VydGlmaWNhdGUgb2YgdGhlIHJvb3Q="  # any base64 DER
Json = dict[str, Any]


def gateway_id(name: str, group: str = RG, subscription: str = SUBSCRIPTION) -> str:
    return resource_id(subscription, group, "Microsoft.Network/applicationGateways", name)


def new_gateway(location: str = "westeurope") -> Json:
    """The smallest gateway body: SKU, a frontend port (REST JSON, as meshflow builds it)."""
    return {
        "location": location,
        "properties": {
            "sku": {"name": "Standard_v2", "tier": "Standard_v2", "capacity": 1},
            "frontendPorts": [{"name": "httpPort", "properties": {"port": 80}}],
        },
    }


def put(client: NetworkManagementClient, group: str, name: str, body: Json, **kwargs: Any) -> Json:
    """``begin_create_or_update(...).result()`` as REST JSON."""
    poller = client.application_gateways.begin_create_or_update(
        group, name, ApplicationGateway(body), **kwargs
    )
    return poller.result().as_dict()


def get(client: NetworkManagementClient, group: str, name: str) -> Json:
    return client.application_gateways.get(group, name).as_dict()


def headers_of(seen: list[dict[str, str]]) -> Callable[[PipelineResponse[Any, Any]], None]:
    """A ``raw_response_hook`` that records every response's headers."""

    def hook(response: PipelineResponse[Any, Any]) -> None:
        seen.append(dict(response.http_response.headers))

    return hook


def arm_http(emu: AzureEmulator) -> Callable[..., requests.Response]:
    """Plain HTTPS calls to the emulator's ARM with a token: ``call(method, url, **kwargs)``."""
    token = emulator_credential(emu).get_token("https://management.azure.com/.default").token

    def call(method: str, url: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        return requests.request(
            method, url, headers=headers, verify=str(emu.ca_bundle), timeout=5, **kw
        )

    return call


def with_certificates(gateway: Json, vault_url: str, identity_id: str) -> Json:
    """What meshflow adds to a gateway it read (steps 17-18): identity and two certificates."""
    body = {k: v for k, v in gateway.items() if k not in ("etag", "id", "name", "type")}
    props = body["properties"]
    props["sslCertificates"] = [
        c for c in props.get("sslCertificates", []) if c["name"] != "frontend-certificate"
    ] + [
        {
            "name": "frontend-certificate",
            "properties": {"keyVaultSecretId": f"{vault_url}/secrets/frontend-certificate"},
        }
    ]
    props["trustedRootCertificates"] = [
        c for c in props.get("trustedRootCertificates", []) if c["name"] != "root-certificate"
    ] + [{"name": "root-certificate", "properties": {"data": ROOT_DER_B64}}]
    body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {identity_id: {}}}
    return body


def agic_https(gateway: Json) -> Json:
    """What AGIC writes for the sample's TLS Ingress (step 21), referencing meshflow's certs."""
    gid, body = gateway["id"], {k: v for k, v in gateway.items() if k != "etag"}
    props = body["properties"]
    props["backendAddressPools"] = [
        {
            "name": "pool-istio-ingress-ingressgateway-443",
            "properties": {"backendAddresses": [{"ipAddress": "10.52.1.17"}]},
        }
    ]
    props["probes"] = [
        {
            "name": "pb-istio-ingress-ingressgateway-443",
            "properties": {
                "protocol": "Https",
                "host": "echoserver.echoserver.svc.cluster.local",
                "path": "/",
                "port": 8443,
                "interval": 30,
                "timeout": 30,
                "unhealthyThreshold": 3,
                "match": {},
            },
        }
    ]
    props["backendHttpSettingsCollection"] = [
        {
            "name": "bp-istio-ingress-ingressgateway-443",
            "properties": {
                "port": 443,
                "protocol": "Https",
                "cookieBasedAffinity": "Disabled",
                "requestTimeout": 30,
                "hostName": "echoserver.echoserver.svc.cluster.local",
                "probe": {"id": f"{gid}/probes/pb-istio-ingress-ingressgateway-443"},
                "trustedRootCertificates": [
                    {"id": f"{gid}/trustedRootCertificates/root-certificate"}
                ],
            },
        }
    ]
    props["httpListeners"] = [
        {
            "name": "fl-https",
            "properties": {
                "frontendIPConfiguration": {
                    "id": f"{gid}/frontendIPConfigurations/appGatewayFrontendIP"
                },
                "frontendPort": {"id": f"{gid}/frontendPorts/httpsPort"},
                "protocol": "Https",
                "sslCertificate": {"id": f"{gid}/sslCertificates/frontend-certificate"},
                "requireServerNameIndication": False,
            },
        }
    ]
    props["requestRoutingRules"] = [
        {
            "name": "rr-https",
            "properties": {
                "ruleType": "Basic",
                "priority": 19500,
                "httpListener": {"id": f"{gid}/httpListeners/fl-https"},
                "backendAddressPool": {
                    "id": f"{gid}/backendAddressPools/pool-istio-ingress-ingressgateway-443"
                },
                "backendHttpSettings": {
                    "id": f"{gid}/backendHttpSettingsCollection/bp-istio-ingress-ingressgateway-443"
                },
            },
        }
    ]
    return body


def as_given(written: Json, read: Json, keys: tuple[str, ...]) -> None:
    """Each child in ``keys`` reads back with the properties it was written with (and more)."""
    for key in keys:
        for child in written["properties"][key]:
            found = next(c for c in read["properties"][key] if c["name"] == child["name"])
            assert {k: found["properties"].get(k) for k in child["properties"]} == child[
                "properties"
            ], (key, child["name"])


# -- etags -----------------------------------------------------------------------------------


def test_every_write_gives_a_new_etag_in_the_body_and_the_etag_header(
    network_client: NetworkManagementClient,
) -> None:
    seen: list[dict[str, str]] = []
    created = put(network_client, RG, "agw-etag", new_gateway(), raw_response_hook=headers_of(seen))
    assert ETAG.fullmatch(created["etag"])
    assert seen[0]["ETag"] == created["etag"]  # the PUT's own reply
    assert created["properties"]["provisioningState"] == "Succeeded"
    port = created["properties"]["frontendPorts"][0]
    assert (port["id"], port["etag"]) == (
        f"{gateway_id('agw-etag')}/frontendPorts/httpPort",
        created["etag"],  # child resources carry the gateway's etag
    )

    seen.clear()
    read = network_client.application_gateways.get(
        RG, "agw-etag", raw_response_hook=headers_of(seen)
    )
    assert read.etag == seen[0]["ETag"] == created["etag"]  # completing the LRO is no write

    updated = put(network_client, RG, "agw-etag", {**created, "tags": {"x": "1"}})
    assert ETAG.fullmatch(updated["etag"])
    assert updated["etag"] != created["etag"]
    assert updated["properties"]["resourceGuid"] == created["properties"]["resourceGuid"]
    assert get(network_client, RG, "agw-etag")["etag"] == updated["etag"]


def test_a_stale_if_match_is_412_and_writes_nothing(
    emulator: AzureEmulator, network_client: NetworkManagementClient
) -> None:
    read = put(network_client, RG, "agw-stale", new_gateway())
    agic = put(network_client, RG, "agw-stale", {**read, "tags": {"by": "agic"}})  # in between
    with pytest.raises(HttpResponseError) as failed:
        put(
            network_client,
            RG,
            "agw-stale",
            {**read, "tags": {"by": "meshflow"}},
            headers={"If-Match": read["etag"]},
        )
    assert failed.value.status_code == 412
    assert failed.value.error is not None
    assert failed.value.error.code == "PreconditionFailed"
    assert [d.code for d in failed.value.error.details] == ["PreconditionFailedEtagMismatch"]
    after = get(network_client, RG, "agw-stale")
    assert (after["etag"], after["tags"]) == (agic["etag"], {"by": "agic"})

    # The current etag passes; so does a list that holds it.
    again = put(
        network_client,
        RG,
        "agw-stale",
        {**after, "tags": {"by": "meshflow"}},
        headers={"If-Match": f'W/"{uuid.uuid4()}", {after["etag"]}'},
    )
    assert again["tags"] == {"by": "meshflow"}


def test_the_sdk_has_no_if_match_keyword_only_headers(
    emulator: AzureEmulator, network_client: NetworkManagementClient
) -> None:
    read = put(network_client, RG, "agw-kwarg", new_gateway())
    emulator.clear_log()
    for keyword in ("if_match", "etag", "match_condition"):
        with pytest.raises(TypeError, match=keyword):  # requests refuses the unknown keyword
            put(network_client, RG, "agw-kwarg", read, **{keyword: read["etag"]})
    assert [e for e in emulator.requests_log() if e["method"] == "PUT"] == []  # never sent


def test_if_match_star_needs_the_gateway_and_if_none_match_star_its_absence(
    network_client: NetworkManagementClient,
) -> None:
    with pytest.raises(HttpResponseError) as missing:
        put(network_client, RG, "agw-star", new_gateway(), headers={"If-Match": "*"})
    assert missing.value.status_code == 412
    with pytest.raises(ResourceNotFoundError):
        network_client.application_gateways.get(RG, "agw-star")

    created = put(network_client, RG, "agw-star", new_gateway(), headers={"If-None-Match": "*"})
    with pytest.raises(HttpResponseError) as exists:
        put(network_client, RG, "agw-star", new_gateway(), headers={"If-None-Match": "*"})
    assert exists.value.status_code == 412
    assert get(network_client, RG, "agw-star")["etag"] == created["etag"]
    updated = put(network_client, RG, "agw-star", created, headers={"If-Match": "*"})
    assert updated["etag"] != created["etag"]


def test_the_412_body_and_etag_headers_over_http(
    emulator: AzureEmulator, network_client: NetworkManagementClient
) -> None:
    current = put(network_client, RG, "agw-raw", new_gateway())
    call = arm_http(emulator)
    url = f"{emulator.url}{gateway_id('agw-raw')}?api-version=2026-03-01"
    stale = f'W/"{uuid.uuid4()}"'
    refused = call("PUT", url, json=new_gateway(), headers={"If-Match": stale})
    assert refused.status_code == 412
    assert refused.json() == {
        "error": {
            "code": "PreconditionFailed",
            "message": "Precondition failed.",
            "details": [
                {
                    "code": "PreconditionFailedEtagMismatch",
                    "message": f"Etag provided in if-match header {stale} does not match etag "
                    f"{current['etag']} of resource {gateway_id('agw-raw')} in NRP data store.",
                }
            ],
        }
    }
    # An etag in the body is ignored (it is read-only); the reply's header is the new one.
    body = {**new_gateway(), "etag": stale}
    accepted = call("PUT", url, json=body, headers={"If-Match": current["etag"]})
    assert accepted.status_code == 200
    assert accepted.headers["ETag"] == accepted.json()["etag"] != stale
    assert "Azure-AsyncOperation" in accepted.headers  # still a long-running operation
    assert call("GET", url).headers["ETag"] == accepted.headers["ETag"]


# -- what meshflow and AGIC write --------------------------------------------------------------


@pytest.fixture
def appgw_identity(msi_client: ManagedServiceIdentityClient) -> Json:
    """User-assigned identity ``appgw-id`` (step 17): its id, principalId and clientId."""
    created = msi_client.user_assigned_identities.create_or_update(
        RG, "appgw-id", Identity(location="westeurope")
    )
    return {"id": created.id, "principalId": created.principal_id, "clientId": created.client_id}


def test_meshflow_and_agic_parts_round_trip_as_given(
    emulator: AzureEmulator, network_client: NetworkManagementClient, appgw_identity: Json
) -> None:
    gid = gateway_id("agw-parts")
    body = new_gateway()
    body["properties"]["frontendIPConfigurations"] = [
        {
            "name": "appGatewayFrontendIP",
            "properties": {"publicIPAddress": {"id": f"{gid}-appgwpip"}},
        }
    ]
    body["properties"]["frontendPorts"].append({"name": "httpsPort", "properties": {"port": 443}})
    first = put(network_client, RG, "agw-parts", body)

    meshflow = with_certificates(first, emulator.url, appgw_identity["id"])
    second = put(network_client, RG, "agw-parts", meshflow, headers={"If-Match": first["etag"]})
    assert second["properties"]["sslCertificates"][0]["properties"] == {
        "keyVaultSecretId": f"{emulator.url}/secrets/frontend-certificate",  # unversioned
        "provisioningState": "Succeeded",
    }
    assert second["properties"]["trustedRootCertificates"][0]["properties"]["data"] == ROOT_DER_B64
    assigned = second["identity"]["userAssignedIdentities"][appgw_identity["id"]]
    assert second["identity"]["type"] == "UserAssigned"
    assert assigned == {
        "principalId": appgw_identity["principalId"],
        "clientId": appgw_identity["clientId"],
    }

    agic = agic_https(second)
    third = put(network_client, RG, "agw-parts", agic, headers={"If-Match": second["etag"]})
    keys = ("backendAddressPools", "probes", "backendHttpSettingsCollection", "httpListeners")
    as_given(agic, third, (*keys, "requestRoutingRules"))
    read = get(network_client, RG, "agw-parts")
    as_given(agic, read, (*keys, "requestRoutingRules"))
    as_given(meshflow, read, ("sslCertificates", "trustedRootCertificates"))
    assert read["identity"] == third["identity"] == second["identity"]

    # meshflow writing again (an unchanged read-modify-write) keeps AGIC's parts.
    fourth = put(
        network_client,
        RG,
        "agw-parts",
        with_certificates(read, emulator.url, appgw_identity["id"]),
        headers={"If-Match": read["etag"]},
    )
    as_given(agic, fourth, (*keys, "requestRoutingRules"))


def test_a_read_modify_write_retries_after_another_writer(
    emulator: AzureEmulator, network_client: NetworkManagementClient, appgw_identity: Json
) -> None:
    created = put(network_client, RG, "agw-retry", new_gateway())
    agic_read = get(network_client, RG, "agw-retry")
    tagged = {**agic_read, "tags": {"managed-by-k8s-ingress": "true"}}

    def attempt(first: bool) -> int:
        """One read-modify-write round of meshflow's; AGIC writes in between on the first."""
        gateway = get(network_client, RG, "agw-retry")
        if first:
            put(network_client, RG, "agw-retry", tagged, headers={"If-Match": agic_read["etag"]})
        body = with_certificates(gateway, emulator.url, appgw_identity["id"])
        try:
            put(network_client, RG, "agw-retry", body, headers={"If-Match": gateway["etag"]})
        except HttpResponseError as exc:
            return int(exc.status_code or 0)
        return 200

    assert [attempt(True), attempt(False)] == [412, 200]
    final = get(network_client, RG, "agw-retry")
    assert final["tags"] == {"managed-by-k8s-ingress": "true"}  # AGIC's write is kept
    assert [c["name"] for c in final["properties"]["sslCertificates"]] == ["frontend-certificate"]
    assert final["etag"] != created["etag"]


def test_gateway_bodies_arm_refuses(
    network_client: NetworkManagementClient, appgw_identity: Json
) -> None:
    gid = gateway_id("agw-bad")

    def refused(body: Json) -> str:
        with pytest.raises(HttpResponseError) as failed:
            put(network_client, RG, "agw-bad", body)
        assert failed.value.status_code == 400
        assert failed.value.error is not None
        return str(failed.value.error.code)

    dangling = new_gateway()
    dangling["properties"]["httpListeners"] = [
        {
            "name": "fl",
            "properties": {
                "frontendPort": {"id": f"{gid}/frontendPorts/httpPort"},
                "sslCertificate": {"id": f"{gid}/sslCertificates/frontend-certificate"},
            },
        }
    ]
    assert refused(dangling) == "InvalidResourceReference"
    twice = new_gateway()
    twice["properties"]["trustedRootCertificates"] = [
        {"name": "root-certificate", "properties": {"data": ROOT_DER_B64}}
    ] * 2
    assert refused(twice) == "DuplicateResourceName"
    no_data = new_gateway()
    no_data["properties"]["sslCertificates"] = [{"name": "c", "properties": {}}]
    assert refused(no_data) == "ApplicationGatewaySslCertificateDataMustBeSpecified"
    system = {**new_gateway(), "identity": {"type": "SystemAssigned"}}
    assert refused(system) == "CannotSetResourceIdentity"
    unknown = resource_id(SUBSCRIPTION, RG, "Microsoft.ManagedIdentity/userAssignedIdentities", "x")
    identity = {"type": "UserAssigned", "userAssignedIdentities": {unknown: {}}}
    stranger = {**new_gateway(), "identity": identity}
    assert refused(stranger) == "FailedIdentityOperation"
    with pytest.raises(ResourceNotFoundError):
        network_client.application_gateways.get(RG, "agw-bad")  # nothing was written


# -- lists -----------------------------------------------------------------------------------


@pytest.fixture
def paged(tmp_path: Path) -> Iterator[tuple[AzureEmulator, NetworkManagementClient]]:
    """An emulator of its own (nobody else's gateways), two resources per page."""
    with (
        new_emulator(tmp_path, lro_retry_after_ms=1, list_page_size=2) as emu,
        NetworkManagementClient(emulator_credential(emu), SUBSCRIPTION, **arm_kwargs(emu)) as c,
    ):
        yield emu, c


def test_lists_by_resource_group_and_subscription_follow_next_links(
    paged: tuple[AzureEmulator, NetworkManagementClient],
) -> None:
    emu, client = paged
    for group, name in [("rg-a", "gw-3"), ("rg-a", "gw-1"), ("rg-b", "gw-4"), ("rg-a", "gw-2")]:
        put(client, group, name, new_gateway())
    emu.register_cluster(SUBSCRIPTION, "rg-b", "aks-c", location="westeurope")  # + its gateway
    emu.clear_log()

    assert [g.name for g in client.application_gateways.list("rg-a")] == ["gw-1", "gw-2", "gw-3"]
    everything = [g.id for g in client.application_gateways.list_all()]
    assert everything == sorted(
        [gateway_id(n, "rg-a") for n in ("gw-1", "gw-2", "gw-3")]
        + [
            gateway_id("gw-4", "rg-b"),
            gateway_id("aks-appgw-westeurope", "MC_rg-b_aks-c_westeurope"),
        ],
        key=str.lower,
    )
    assert [g.name for g in client.application_gateways.list("rg-none")] == []
    pips = [p.name for p in client.public_ip_addresses.list_all()]
    assert pips == ["aks-appgw-westeurope-appgwpip"]
    pages = [e["path"] for e in emu.requests_log() if e["path"].endswith("applicationGateways")]
    assert len(pages) == 2 + 3 + 1  # rg-a: 3 on 2 pages; all 5 on 3 pages; rg-none: 1


def test_a_page_is_value_and_an_absolute_next_link(
    paged: tuple[AzureEmulator, NetworkManagementClient],
) -> None:
    emu, client = paged
    for name in ("gw-1", "gw-2", "gw-3"):
        put(client, "rg-a", name, new_gateway())
    call = arm_http(emu)
    url = f"{emu.url}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Network/applicationGateways"
    first = call("GET", url, params={"api-version": "2026-03-01"}).json()
    assert [g["name"] for g in first["value"]] == ["gw-1", "gw-2"]
    assert first["value"][0]["etag"] == get(client, "rg-a", "gw-1")["etag"]  # whole resources
    assert first["nextLink"].startswith(f"{url}?api-version=2026-03-01&$skiptoken=")
    last = call("GET", first["nextLink"]).json()
    assert [g["name"] for g in last["value"]] == ["gw-3"]
    assert "nextLink" not in last
    bad = call("GET", url, params={"api-version": "2026-03-01", "$skiptoken": "!"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "InvalidSkipToken")


# -- the sandbox's gateways --------------------------------------------------------------------


def test_a_registered_cluster_has_its_gateway_and_public_ip(
    emulator: AzureEmulator,
    aks_client: ContainerServiceClient,
    network_client: NetworkManagementClient,
) -> None:
    addresses = set()
    for name in ("agw-one", "agw-two"):
        emulator.register_cluster(SUBSCRIPTION, RG, name, location="westeurope")
        node_rg = f"MC_{RG}_{name}_westeurope"
        gid = gateway_id("aks-appgw-westeurope", node_rg)
        pip_id = resource_id(
            SUBSCRIPTION,
            node_rg,
            "Microsoft.Network/publicIPAddresses",
            "aks-appgw-westeurope-appgwpip",
        )
        addon = (aks_client.managed_clusters.get(RG, name).addon_profiles or {})[
            "ingressApplicationGateway"
        ]
        assert (addon.config or {})["applicationGatewayId"] == gid

        gateway = get(network_client, node_rg, "aks-appgw-westeurope")
        props = gateway["properties"]
        assert gateway["id"] == gid
        assert ETAG.fullmatch(gateway["etag"])
        assert props["provisioningState"] == "Succeeded"
        assert props["sku"]["name"] == props["sku"]["tier"] == "Standard_v2"
        subnet = props["gatewayIPConfigurations"][0]["properties"]["subnet"]["id"]
        assert subnet.endswith(f"/virtualNetworks/{name}-vnet/subnets/AppGateway")
        (frontend,) = props["frontendIPConfigurations"]
        assert frontend["id"] == f"{gid}/frontendIPConfigurations/appGatewayFrontendIP"
        assert frontend["properties"]["publicIPAddress"] == {"id": pip_id}
        assert sorted(p["properties"]["port"] for p in props["frontendPorts"]) == [80, 443]
        added_later = ["httpListeners", "requestRoutingRules", "backendHttpSettingsCollection"]
        added_later += ["probes", "sslCertificates", "trustedRootCertificates"]
        assert {k: props[k] for k in added_later} == {k: [] for k in added_later}

        pip = network_client.public_ip_addresses.get(node_rg, "aks-appgw-westeurope-appgwpip")
        assert pip.id == pip_id
        assert ipaddress.ip_address(pip.ip_address or "") in ipaddress.ip_network("203.0.113.0/24")
        assert pip.public_ip_allocation_method == "Static"
        assert pip.ip_configuration is not None
        assert pip.ip_configuration.id == frontend["id"]
        assert ETAG.fullmatch(pip.etag or "")
        addresses.add(pip.ip_address)
    assert len(addresses) == 2  # one address per gateway


def test_registering_again_keeps_the_gateway_as_written(
    emulator: AzureEmulator, network_client: NetworkManagementClient, appgw_identity: Json
) -> None:
    emulator.register_cluster(SUBSCRIPTION, RG, "agw-again", location="westeurope")
    node_rg = f"MC_{RG}_agw-again_westeurope"
    read = get(network_client, node_rg, "aks-appgw-westeurope")
    written = put(
        network_client,
        node_rg,
        "aks-appgw-westeurope",
        with_certificates(read, emulator.url, appgw_identity["id"]),
        headers={"If-Match": read["etag"]},
    )
    ip = network_client.public_ip_addresses.get(node_rg, "aks-appgw-westeurope-appgwpip")

    emulator.register_cluster(SUBSCRIPTION, RG, "agw-again", location="westeurope")
    assert get(network_client, node_rg, "aks-appgw-westeurope") == written  # etag included
    again = network_client.public_ip_addresses.get(node_rg, "aks-appgw-westeurope-appgwpip")
    assert (again.ip_address, again.etag) == (ip.ip_address, ip.etag)


def test_a_restarted_emulator_keeps_the_gateway_and_its_address(tmp_path: Path) -> None:
    node_rg = f"MC_{RG}_agw-restart_westeurope"
    first = new_emulator(tmp_path, lro_retry_after_ms=1).start()
    try:
        first.register_cluster(SUBSCRIPTION, RG, "agw-restart", location="westeurope")
        with NetworkManagementClient(
            emulator_credential(first), SUBSCRIPTION, **arm_kwargs(first)
        ) as client:
            read = get(client, node_rg, "aks-appgw-westeurope")
            body = {
                **read,
                "properties": {
                    **read["properties"],
                    "trustedRootCertificates": [
                        {"name": "root-certificate", "properties": {"data": ROOT_DER_B64}}
                    ],
                },
            }
            written = put(
                client, node_rg, "aks-appgw-westeurope", body, headers={"If-Match": read["etag"]}
            )
            ip = client.public_ip_addresses.get(node_rg, "aks-appgw-westeurope-appgwpip").ip_address
    finally:
        first.stop()

    with new_emulator(tmp_path, lro_retry_after_ms=1) as second:
        # As the emulator process does on every start: its config registers the cluster again.
        second.register_cluster(SUBSCRIPTION, RG, "agw-restart", location="westeurope")
        with NetworkManagementClient(
            emulator_credential(second), SUBSCRIPTION, **arm_kwargs(second)
        ) as client:
            assert get(client, node_rg, "aks-appgw-westeurope") == written
            pip = client.public_ip_addresses.get(node_rg, "aks-appgw-westeurope-appgwpip")
            assert pip.ip_address == ip


# -- the rest of step 17: role assignment and vault access for the gateway's identity -------


def test_the_sandbox_vault_takes_the_gateway_identity_access_policy(
    emulator: AzureEmulator,
    azure_credential: ClientSecretCredential,
    appgw_identity: Json,
    authorization_client: AuthorizationManagementClient,
    aks_client: ContainerServiceClient,
) -> None:
    vault = env.vault_registration()
    keys = (vault.pop("subscription"), vault.pop("resourceGroup"), vault.pop("name"))
    emulator.register_vault(*keys, **vault)
    emulator.register_cluster(SUBSCRIPTION, RG, "agw-roles", location="westeurope")
    kv = KeyVaultManagementClient(azure_credential, env.SUBSCRIPTION, **arm_kwargs(emulator))
    found = kv.vaults.get(env.RESOURCE_GROUP, env.VAULT_NAME)
    assert (found.id, found.properties.sku.name) == (env.VAULT_ID, "premium")
    principal = appgw_identity["principalId"]
    entry = AccessPolicyEntry(
        tenant_id=emulator.tenant_id, object_id=principal, permissions=Permissions(secrets=["get"])
    )
    kv.vaults.update_access_policy(
        env.RESOURCE_GROUP,
        env.VAULT_NAME,
        AccessPolicyUpdateKind.ADD,
        VaultAccessPolicyParameters(
            properties=VaultAccessPolicyProperties(access_policies=[entry])
        ),
    )
    emulator.register_vault(*keys, **vault)  # a restarted emulator registers it again
    policies = kv.vaults.get(env.RESOURCE_GROUP, env.VAULT_NAME).properties.access_policies
    assert [
        list(p.permissions.secrets or []) for p in policies or [] if p.object_id == principal
    ] == [["get"]]

    # "Managed Identity Operator" for the AGIC identity, over appgw-id.
    addon = (aks_client.managed_clusters.get(RG, "agw-roles").addon_profiles or {})[
        "ingressApplicationGateway"
    ]
    assert addon.identity is not None
    role = (
        f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
        f"{MANAGED_IDENTITY_OPERATOR}"
    )
    name = str(uuid.uuid4())
    authorization_client.role_assignments.create(
        appgw_identity["id"],
        name,
        RoleAssignmentCreateParameters(
            role_definition_id=role,
            principal_id=addon.identity.object_id or "",
            principal_type="ServicePrincipal",
        ),
    )
    assigned = authorization_client.role_assignments.get(appgw_identity["id"], name)
    assert (assigned.scope, assigned.principal_id) == (
        appgw_identity["id"],
        addon.identity.object_id,
    )


def test_identities_and_role_assignments_are_listed_where_they_apply(
    paged: tuple[AzureEmulator, NetworkManagementClient],
) -> None:
    emu, _ = paged
    kwargs = arm_kwargs(emu)
    with (
        emulator_credential(emu) as credential,
        ManagedServiceIdentityClient(credential, SUBSCRIPTION, **kwargs) as msi,
        AuthorizationManagementClient(credential, SUBSCRIPTION, **kwargs) as auth,
    ):
        for group, name in [("rg-a", "appgw-id"), ("rg-a", "other-id"), ("rg-a", "third-id")]:
            msi.user_assigned_identities.create_or_update(group, name, Identity(location="w"))
        msi.user_assigned_identities.create_or_update("rg-b", "elsewhere", Identity(location="w"))
        listed = [i.name for i in msi.user_assigned_identities.list_by_resource_group("rg-a")]
        assert listed == ["appgw-id", "other-id", "third-id"]  # over two pages
        assert len(list(msi.user_assigned_identities.list_by_subscription())) == 4

        identity = resource_id(
            SUBSCRIPTION, "rg-a", "Microsoft.ManagedIdentity/userAssignedIdentities", "appgw-id"
        )
        group = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-a"
        role = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
        agic, reader = str(uuid.uuid4()), str(uuid.uuid4())
        for scope, principal, definition in [
            (identity, agic, MANAGED_IDENTITY_OPERATOR),  # step 17
            (group, reader, "acdd72a7-3385-48ef-bd42-f606fba81ae7"),  # inherited by the identity
            (f"{group}/providers/Microsoft.Network/applicationGateways/gw", reader, "x"),  # aside
        ]:
            params = RoleAssignmentCreateParameters(
                role_definition_id=role + definition, principal_id=principal
            )
            auth.role_assignments.create(scope, str(uuid.uuid4()), params)

        def principals(scope: str, **kw: Any) -> list[tuple[str, str]]:
            found = auth.role_assignments.list_for_scope(scope, **kw)
            return sorted((str(r.principal_id), str(r.scope)) for r in found)

        assert principals(identity) == sorted([(agic, identity), (reader, group)])
        assert principals(identity, filter=f"principalId eq '{agic}'") == [(agic, identity)]
        assert len(principals(group)) == 3  # at and below the group
        assert len(principals(group, filter="atScope()")) == 1
        with pytest.raises(HttpResponseError):
            principals(group, filter="roleDefinitionId eq 'x'")


def test_network_resources_saved_without_etags_get_one_on_restore() -> None:
    pip = resource_id(SUBSCRIPTION, RG, "Microsoft.Network/publicIPAddresses", "old-pip")
    old = {
        "id": pip,
        "name": "old-pip",
        "type": "Microsoft.Network/publicIPAddresses",
        "location": "w",
        "properties": {"ipAddress": "20.1.2.3"},
    }
    arm = Arm("tenant")
    arm.restore({"resources": {pip.lower(): old}, "clusters": {}, "operations": {}})
    assert ETAG.fullmatch(arm.resources[pip.lower()]["etag"])
