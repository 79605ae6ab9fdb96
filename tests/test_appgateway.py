"""Tests for meshflow.appgateway: meshflow's parts of an App Gateway, and what AGIC writes.

Pure: the module works on the ARM REST JSON of ``Microsoft.Network/applicationGateways``, so
the fixtures are such documents, built by the small functions below. No process, no network,
no SDK client. The certificates are real self-signed X.509 certificates made in memory with
``cryptography``.

Where the shapes come from:

* the gateway document: the ``ApplicationGateway`` definition and its ``ApplicationGatewayCreate``
  example in Azure/azure-rest-api-specs (``specification/network/resource-manager/
  Microsoft.Network/stable/*/applicationGateway.json``): camelCase, ``properties`` nested,
  every sub-resource ``{"name", "id", "etag", "properties"}``, ``sku`` Standard_v2,
  ``sslCertificates[].properties.keyVaultSecretId``, ``trustedRootCertificates[].properties
  .data``, ``backendHttpSettingsCollection[].properties.{protocol, hostName,
  pickHostNameFromBackendAddress, trustedRootCertificates, probe}``, ``probes[].properties
  .{protocol, host, port, path, match}``, ``identity.userAssignedIdentities``;
* what AGIC writes: Azure/application-gateway-kubernetes-ingress, ``pkg/appgw/internaltypes.go``
  (name prefixes ``bp``, ``pb``, ``pool``, ``fp``, ``fl``, ``rr``, ``sslr``; the name builders
  ``generateHTTPSettingsName``, ``generateProbeName``, ``generateAddressPoolName``, ...; the
  defaults ``defaulthttpsetting``, ``defaultaddresspool``, ``defaultprobe-Http/Https``),
  ``pkg/appgw/identifier.go`` (sub-resource ids, e.g. ``.../frontEndPorts/fp-443``),
  ``pkg/appgw/backendhttpsettings.go`` (``backend-protocol``, ``backend-hostname``,
  ``appgw-trusted-root-certificate`` -> ``protocol: Https``, ``hostName``,
  ``trustedRootCertificates`` by id, ``pickHostNameFromBackendAddress: false``),
  ``pkg/appgw/health_probes.go`` (``health-probe-hostname/port/path``),
  ``pkg/appgw/frontend_listeners.go`` (an ``appgw-ssl-certificate`` listener refers to
  ``.../sslCertificates/<name>`` by id) and ``pkg/appgw/redirects.go`` (``ssl-redirect``: a
  Permanent redirect ``sslr-fl-<hash>`` to the HTTPS listener);
* the Ingress and its annotations: ``meshflow/manifests/ingress.py`` (``tls_ingress``), the same
  as in Azure-Samples/aks-multi-cluster-service-mesh (``istio/README.md``).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshflow import appgateway as agw
from meshflow.appgateway import Json

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)

SUB = "6c3c1a2e-8d52-4b0e-9b8e-2f1c0d9a7e41"
GROUP = "rg-alpha"
GATEWAY = "appgw-alpha"
GATEWAY_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{GROUP}"
    f"/providers/Microsoft.Network/applicationGateways/{GATEWAY}"
)
IDENTITY_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{GROUP}"
    f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{agw.GATEWAY_IDENTITY}"
)
OTHER_IDENTITY_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{GROUP}"
    "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ingressapplicationgateway-alpha"
)
PUBLIC_IP_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{GROUP}"
    f"/providers/Microsoft.Network/publicIPAddresses/{GATEWAY}-pip"
)
SUBNET_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{GROUP}"
    "/providers/Microsoft.Network/virtualNetworks/vnet-alpha/subnets/appgw"
)
VAULT_URL = "https://kv-alpha.vault.azure.net/"
SECRET_ID = "https://kv-alpha.vault.azure.net/secrets/frontend-certificate"
SECRET_VERSION = "4b2f0c6e9a1d4e7f8c3b5a6d7e8f9012"
ETAG = 'W/"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"'

ECHOSERVER_HOST = "echoserver.echoserver.svc.cluster.local"
PROBE_PORT = 8443

# AGIC's names for the Ingress ``istio-ingress/istio-ingress-application-gateway`` sending ``/``
# to Service ``ingressgateway`` port 443 (target port 8443), per internaltypes.go:
#   generateHTTPSettingsName: bp-<namespace>-<service>-<service port>-<backend port>-<ingress>
#   generateProbeName:        pb-<namespace>-<service>-<service port>-<ingress>
#   generateAddressPoolName:  pool-<namespace>-<service>-<service port>-bp-<backend port>
# Listener, rule and redirect names end in utils.GetHashCode(listenerIdentifier), an MD5 hex
# digest: the two digests here are stand-ins of that form, not computed.
SETTINGS = "bp-istio-ingress-ingressgateway-443-8443-istio-ingress-application-gateway"
PROBE = "pb-istio-ingress-ingressgateway-443-istio-ingress-application-gateway"
POOL = "pool-istio-ingress-ingressgateway-443-bp-8443"
HTTP_LISTENER = "fl-9c1d0e5b7a2f4c8e6d3b1a0f9e8d7c6b"
HTTPS_LISTENER = "fl-2e7a9b4c1d6f8e0a3b5c7d9e1f2a4b6c"


# --------------------------------------------------------------------------- certificates


@cache
def _self_signed(common_name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def pem(common_name: str = "Istio Root CA") -> str:
    return _self_signed(common_name).public_bytes(serialization.Encoding.PEM).decode()


def der(common_name: str = "Istio Root CA") -> bytes:
    return _self_signed(common_name).public_bytes(serialization.Encoding.DER)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


ROOT = "Istio Root CA"
OTHER_ROOT = "Some Other Root"


# --------------------------------------------------------------------------- gateway documents


def ref(collection: str, name: str) -> Json:
    """A reference to one of the gateway's sub-resources: ``{"id": ...}`` (ARM SubResource)."""
    return {"id": f"{GATEWAY_ID}/{collection}/{name}"}


def sub_resource(collection: str, name: str, properties: Json) -> Json:
    """A sub-resource as ARM returns it: name, id, etag, properties with provisioningState."""
    return {
        "name": name,
        "id": f"{GATEWAY_ID}/{collection}/{name}",
        "etag": ETAG,
        "properties": {**properties, "provisioningState": "Succeeded"},
    }


def public_frontend() -> Json:
    return sub_resource(
        "frontendIPConfigurations",
        "appGatewayFrontendIP",
        {"privateIPAllocationMethod": "Dynamic", "publicIPAddress": {"id": PUBLIC_IP_ID}},
    )


def private_frontend() -> Json:
    return sub_resource(
        "frontendIPConfigurations",
        "appGatewayPrivateFrontendIP",
        {
            "privateIPAddress": "10.225.0.10",
            "privateIPAllocationMethod": "Static",
            "subnet": {"id": SUBNET_ID},
        },
    )


def arm_gateway() -> Json:
    """A Standard_v2 gateway as ARM's GET returns it, before meshflow or AGIC wrote to it.

    Shape: ``ApplicationGateway`` in azure-rest-api-specs (``applicationGateway.json``) and its
    ``ApplicationGatewayCreate`` example. It holds a listener certificate, a trusted root and a
    user-assigned identity that are not meshflow's, so none of meshflow's three parts is there.
    """
    return {
        "name": GATEWAY,
        "id": GATEWAY_ID,
        "etag": ETAG,
        "type": "Microsoft.Network/applicationGateways",
        "location": "westeurope",
        "tags": {"owner": "platform"},
        "identity": {
            "type": "UserAssigned",
            "userAssignedIdentities": {
                OTHER_IDENTITY_ID: {
                    "principalId": "1d2c3b4a-5f6e-4d7c-8b9a-0f1e2d3c4b5a",
                    "clientId": "a5b4c3d2-e1f0-4a9b-8c7d-6e5f4a3b2c1d",
                }
            },
        },
        "properties": {
            "provisioningState": "Succeeded",
            "operationalState": "Running",
            "resourceGuid": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7",
            "sku": {"name": "Standard_v2", "tier": "Standard_v2", "capacity": 2},
            "gatewayIPConfigurations": [
                sub_resource(
                    "gatewayIPConfigurations", "appGatewayIpConfig", {"subnet": {"id": SUBNET_ID}}
                )
            ],
            "sslCertificates": [
                sub_resource(
                    "sslCertificates",
                    "listener-certificate",
                    {
                        "keyVaultSecretId": "https://kv-alpha.vault.azure.net/secrets/listener",
                        "publicCertData": "MIIC...",
                    },
                )
            ],
            "trustedRootCertificates": [
                sub_resource(
                    "trustedRootCertificates", "other-root", {"data": b64(der(OTHER_ROOT))}
                )
            ],
            "frontendIPConfigurations": [public_frontend(), private_frontend()],
            "frontendPorts": [
                sub_resource("frontendPorts", "appGatewayFrontendPort", {"port": 80}),
                sub_resource("frontendPorts", "appGatewayFrontendPort443", {"port": 443}),
            ],
            "backendAddressPools": [
                sub_resource(
                    "backendAddressPools",
                    "appGatewayBackendPool",
                    {"backendAddresses": [{"ipAddress": "10.1.0.4"}]},
                )
            ],
            "backendHttpSettingsCollection": [
                sub_resource(
                    "backendHttpSettingsCollection",
                    "appGatewayBackendHttpSettings",
                    {
                        "port": 80,
                        "protocol": "Http",
                        "cookieBasedAffinity": "Disabled",
                        "pickHostNameFromBackendAddress": False,
                        "requestTimeout": 30,
                        "probe": ref("probes", "appGatewayProbe"),
                    },
                )
            ],
            "httpListeners": [
                sub_resource(
                    "httpListeners",
                    "appGatewayHttpListener",
                    {
                        "frontendIPConfiguration": ref(
                            "frontendIPConfigurations", "appGatewayFrontendIP"
                        ),
                        "frontendPort": ref("frontendPorts", "appGatewayFrontendPort"),
                        "protocol": "Http",
                        "requireServerNameIndication": False,
                    },
                )
            ],
            "requestRoutingRules": [
                sub_resource(
                    "requestRoutingRules",
                    "rule1",
                    {
                        "ruleType": "Basic",
                        "priority": 100,
                        "httpListener": ref("httpListeners", "appGatewayHttpListener"),
                        "backendAddressPool": ref("backendAddressPools", "appGatewayBackendPool"),
                        "backendHttpSettings": ref(
                            "backendHttpSettingsCollection", "appGatewayBackendHttpSettings"
                        ),
                    },
                )
            ],
            "probes": [
                sub_resource(
                    "probes",
                    "appGatewayProbe",
                    {
                        "protocol": "Http",
                        "host": "localhost",
                        "path": "/",
                        "interval": 30,
                        "timeout": 30,
                        "unhealthyThreshold": 3,
                        "pickHostNameFromBackendHttpSettings": False,
                        "minServers": 0,
                        "match": {"statusCodes": ["200-399"]},
                    },
                )
            ],
            "urlPathMaps": [],
            "redirectConfigurations": [],
        },
    }


def agic_ref(collection: str, name: str) -> Json:
    """A reference as AGIC's identifier.go writes it (``frontEndPorts``, ``frontEndIPConfig...``).

    AGIC's casing, not ARM's (``frontendPorts``): ARM ids are case-insensitive.
    """
    return {"id": f"{GATEWAY_ID}/{collection}/{name}"}


def agic_probe(name: str, protocol: str, host: str, path: str, port: int | None) -> Json:
    """A probe as health_probes.go builds it (defaultProbe, then the Ingress's annotations)."""
    props: Json = {
        "protocol": protocol,
        "host": host,
        "path": path,
        "interval": 30,
        "timeout": 30,
        "unhealthyThreshold": 3,
        "pickHostNameFromBackendHttpSettings": False,
        "minServers": 0,
        "match": {},
    }
    if port is not None:
        props["port"] = port
    return sub_resource("probes", name, props)


def agic_gateway() -> Json:
    """The gateway after meshflow's steps 17-18 and AGIC's reconcile of the HTTPS Ingress.

    The Ingress is ``tls_ingress()``: ``appgw-ssl-certificate: frontend-certificate``,
    ``ssl-redirect: "true"``, ``backend-protocol: https``, ``backend-hostname`` and
    ``health-probe-hostname: echoserver.echoserver.svc.cluster.local``,
    ``appgw-trusted-root-certificate: root-certificate``, ``health-probe-port: "8443"``,
    ``health-probe-path: /``. AGIC owns ports, pools, settings, listeners, redirects, rules and
    probes (named as in internaltypes.go); meshflow's identity, certificate and root stay.
    The root's ``data`` is the certificate as base64 of its DER file, the other encoding the
    field takes: the comparison must be by content.
    """
    gateway = arm_gateway()
    gateway["identity"]["userAssignedIdentities"][IDENTITY_ID] = {
        "principalId": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
        "clientId": "0a1b2c3d-4e5f-4a6b-7c8d-9e0f1a2b3c4d",
    }
    props = gateway["properties"]
    props["sslCertificates"].append(
        sub_resource(
            "sslCertificates",
            agw.FRONTEND_CERTIFICATE,
            {"keyVaultSecretId": SECRET_ID, "publicCertData": "MIIC..."},
        )
    )
    props["trustedRootCertificates"].append(
        sub_resource(
            "trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE, {"data": b64(der(ROOT))}
        )
    )
    public = agic_ref("frontEndIPConfigurations", "appGatewayFrontendIP")
    props["frontendPorts"] = [
        sub_resource("frontendPorts", "fp-443", {"port": 443}),
        sub_resource("frontendPorts", "fp-80", {"port": 80}),
    ]
    props["backendAddressPools"] = [
        sub_resource("backendAddressPools", "defaultaddresspool", {"backendAddresses": []}),
        sub_resource(
            "backendAddressPools",
            POOL,
            {"backendAddresses": [{"ipAddress": "10.244.1.17"}, {"ipAddress": "10.244.2.9"}]},
        ),
    ]
    props["backendHttpSettingsCollection"] = [
        sub_resource(
            "backendHttpSettingsCollection",
            SETTINGS,
            {
                "port": 8443,
                "protocol": "Https",
                "hostName": ECHOSERVER_HOST,
                "pickHostNameFromBackendAddress": False,
                "cookieBasedAffinity": "Disabled",
                "requestTimeout": 30,
                "probe": agic_ref("probes", PROBE),
                "trustedRootCertificates": [
                    agic_ref("trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE)
                ],
            },
        ),
        sub_resource(
            "backendHttpSettingsCollection",
            "defaulthttpsetting",
            {
                "port": 80,
                "protocol": "Http",
                "pickHostNameFromBackendAddress": False,
                "cookieBasedAffinity": "Disabled",
                "requestTimeout": 30,
                "probe": agic_ref("probes", "defaultprobe-Http"),
            },
        ),
    ]
    props["httpListeners"] = [
        sub_resource(
            "httpListeners",
            HTTPS_LISTENER,
            {
                "frontendIPConfiguration": public,
                "frontendPort": agic_ref("frontEndPorts", "fp-443"),
                "protocol": "Https",
                "sslCertificate": agic_ref("sslCertificates", agw.FRONTEND_CERTIFICATE),
                "requireServerNameIndication": False,
            },
        ),
        sub_resource(
            "httpListeners",
            HTTP_LISTENER,
            {
                "frontendIPConfiguration": public,
                "frontendPort": agic_ref("frontEndPorts", "fp-80"),
                "protocol": "Http",
                "requireServerNameIndication": False,
            },
        ),
    ]
    props["redirectConfigurations"] = [
        sub_resource(
            "redirectConfigurations",
            f"sslr-{HTTPS_LISTENER}",
            {
                "redirectType": "Permanent",
                "targetListener": agic_ref("httpListeners", HTTPS_LISTENER),
                "includePath": True,
                "includeQueryString": True,
            },
        )
    ]
    props["requestRoutingRules"] = [
        sub_resource(
            "requestRoutingRules",
            f"rr-{HTTPS_LISTENER.removeprefix('fl-')}",
            {
                "ruleType": "Basic",
                "priority": 19500,
                "httpListener": agic_ref("httpListeners", HTTPS_LISTENER),
                "backendAddressPool": agic_ref("backendAddressPools", POOL),
                "backendHttpSettings": agic_ref("backendHttpSettingsCollection", SETTINGS),
            },
        ),
        sub_resource(
            "requestRoutingRules",
            f"rr-{HTTP_LISTENER.removeprefix('fl-')}",
            {
                "ruleType": "Basic",
                "priority": 19510,
                "httpListener": agic_ref("httpListeners", HTTP_LISTENER),
                "redirectConfiguration": agic_ref(
                    "redirectConfigurations", f"sslr-{HTTPS_LISTENER}"
                ),
            },
        ),
    ]
    props["probes"] = [
        agic_probe("defaultprobe-Http", "Http", "localhost", "/", None),
        agic_probe("defaultprobe-Https", "Https", "localhost", "/", None),
        agic_probe(PROBE, "Https", ECHOSERVER_HOST, "/", PROBE_PORT),
    ]
    return gateway


def named(gateway: Json, collection: str, name: str) -> Json:
    """The sub-resource ``name`` of ``collection`` (fails the test when absent)."""
    found = [i for i in gateway["properties"][collection] if i["name"] == name]
    assert len(found) == 1, (collection, name, found)
    item: Json = found[0]
    return item


def parts(gateway: Json, **overrides: str) -> Json:
    """``with_meshflow_parts`` with this module's identity, secret and root."""
    args = {"identity_id": IDENTITY_ID, "secret_id": SECRET_ID, "root_pem": pem(ROOT)}
    args.update(overrides)
    return agw.with_meshflow_parts(gateway, **args)


def missing(gateway: Json, **overrides: str) -> list[str]:
    """``missing`` with this module's identity, secret and root."""
    args = {"identity_id": IDENTITY_ID, "secret_id": SECRET_ID, "root_pem": pem(ROOT)}
    args.update(overrides)
    return agw.missing(gateway, **args)


IDENTITY_MISSING = "identity appgw-id"
SSL_MISSING = "SSL certificate frontend-certificate"
ROOT_MISSING = "trusted root certificate root-certificate"
ALL_MISSING = [IDENTITY_MISSING, SSL_MISSING, ROOT_MISSING]

NO_LISTENER = "no HTTPS listener uses frontend-certificate"
NO_SETTINGS = f"no HTTPS backend settings for {ECHOSERVER_HOST} trust root-certificate"
NO_PROBE = f"no health probe for {ECHOSERVER_HOST} on port {PROBE_PORT}, path /"


# --------------------------------------------------------------------------- resource ids


@pytest.mark.parametrize(
    ("rid", "expected"),
    [
        (GATEWAY_ID, (SUB, GROUP, GATEWAY)),
        (PUBLIC_IP_ID, (SUB, GROUP, f"{GATEWAY}-pip")),
        (IDENTITY_ID, (SUB, GROUP, "appgw-id")),
        # ARM is case-insensitive in its segment names, and some APIs lowercase them
        (GATEWAY_ID.replace("resourceGroups", "resourcegroups"), (SUB, GROUP, GATEWAY)),
        (
            GATEWAY_ID.replace("/subscriptions/", "/SUBSCRIPTIONS/").replace(
                "/resourceGroups/", "/RESOURCEGROUPS/"
            ),
            (SUB, GROUP, GATEWAY),
        ),
        (f"{GATEWAY_ID}/", (SUB, GROUP, GATEWAY)),
        # a sub-resource id: the last segment is the sub-resource's name
        (
            f"{GATEWAY_ID}/sslCertificates/frontend-certificate",
            (SUB, GROUP, "frontend-certificate"),
        ),
    ],
)
def test_parse_resource_id(rid: str, expected: tuple[str, str, str]) -> None:
    assert agw.parse_resource_id(rid) == expected


def test_parse_resource_id_keeps_the_case_of_values() -> None:
    rid = "/subscriptions/SUB-A/resourcegroups/RG-Mixed/providers/Microsoft.Network/x/GW-1"
    assert agw.parse_resource_id(rid) == ("SUB-A", "RG-Mixed", "GW-1")


@pytest.mark.parametrize(
    "rid",
    [
        "",
        "/",
        "not-an-id",
        f"/subscriptions/{SUB}",
        f"/subscriptions/{SUB}/resourceGroups",
        f"/subscriptions/{SUB}/resourceGroups/{GROUP}",
        # the type without a name: 7 segments
        f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Network/applicationGateways",
        # no subscriptions segment
        f"/resourceGroups/{GROUP}/providers/Microsoft.Network/applicationGateways/{GATEWAY}/x",
        # no resourceGroups segment
        f"/subscriptions/{SUB}/providers/Microsoft.Network/applicationGateways/{GATEWAY}/x/y",
        # subscriptions as the last segment: no value after it
        f"/resourceGroups/{GROUP}/providers/Microsoft.Network/a/b/c/subscriptions",
    ],
)
def test_parse_resource_id_rejects(rid: str) -> None:
    with pytest.raises(ValueError, match="is not an ARM resource id"):
        agw.parse_resource_id(rid)


@pytest.mark.parametrize(
    "rid",
    [
        "/subscriptions//resourceGroups//providers/Microsoft.Network/applicationGateways/gw",
        f"/subscriptions/{SUB}/resourceGroups//providers/Microsoft.Network/applicationGateways/gw",
    ],
)
def test_parse_resource_id_rejects_empty_segments(rid: str) -> None:
    with pytest.raises(ValueError, match="is not an ARM resource id"):
        agw.parse_resource_id(rid)


# --------------------------------------------------------------------------- secret id


@pytest.mark.parametrize("vault_url", [VAULT_URL, VAULT_URL.rstrip("/"), VAULT_URL + "//"])
def test_unversioned_secret_id(vault_url: str) -> None:
    secret_id = agw.unversioned_secret_id(vault_url)
    assert secret_id == SECRET_ID
    # no version segment: .../secrets/<name>, and nothing after the name
    assert secret_id.removeprefix("https://").split("/")[1:] == ["secrets", "frontend-certificate"]


def test_unversioned_secret_id_other_name() -> None:
    assert (
        agw.unversioned_secret_id("https://kv.vault.azure.net", "leaf")
        == "https://kv.vault.azure.net/secrets/leaf"
    )


# --------------------------------------------------------------------------- certificate data


def test_certificate_data_is_base64_of_the_pem_file() -> None:
    data = agw.certificate_data(pem(ROOT))
    assert base64.b64decode(data, validate=True).decode() == pem(ROOT)


def test_certificate_der_round_trips_a_pem() -> None:
    out = agw.certificate_der(agw.certificate_data(pem(ROOT)))
    assert out == der(ROOT)
    assert out is not None
    assert x509.load_der_x509_certificate(out) == _self_signed(ROOT)


def test_certificate_der_recognizes_base64_of_a_der_file() -> None:
    assert agw.certificate_der(b64(der(ROOT))) == der(ROOT)


def test_certificate_der_ignores_line_endings_and_text_around_the_pem() -> None:
    text = "Bag Attributes\r\n    friendlyName: root\r\n" + pem(ROOT).replace("\n", "\r\n")
    assert agw.certificate_der(b64(text.encode())) == der(ROOT)


def test_different_certificates_give_different_der() -> None:
    assert agw.certificate_der(agw.certificate_data(pem(OTHER_ROOT))) == der(OTHER_ROOT)
    assert der(OTHER_ROOT) != der(ROOT)


@pytest.mark.parametrize(
    "data",
    [
        "not base64 at all!",
        "%%%%",
        "abc",  # bad padding
        # a PEM frame whose body is not base64
        b64(b"-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n"),
    ],
)
def test_certificate_der_of_garbage_is_none(data: str) -> None:
    assert agw.certificate_der(data) is None


# --------------------------------------------------------------------------- missing()


def test_missing_everything_on_a_bare_gateway() -> None:
    assert missing(arm_gateway()) == ALL_MISSING
    assert missing({}) == ALL_MISSING
    assert missing({"name": GATEWAY, "identity": None, "properties": None}) == ALL_MISSING


def test_nothing_missing_once_the_parts_are_applied() -> None:
    assert missing(parts(arm_gateway())) == []
    assert missing(parts({})) == []


def test_nothing_missing_on_the_agic_gateway() -> None:
    assert missing(agic_gateway()) == []


def test_missing_compares_the_identity_id_case_insensitively() -> None:
    gateway = parts(arm_gateway())
    identities = gateway["identity"]["userAssignedIdentities"]
    identities[IDENTITY_ID.lower()] = identities.pop(IDENTITY_ID)
    assert missing(gateway) == []
    assert missing(gateway, identity_id=IDENTITY_ID.upper()) == []


def test_missing_identity_alone() -> None:
    gateway = parts(arm_gateway())
    del gateway["identity"]["userAssignedIdentities"][IDENTITY_ID]
    assert missing(gateway) == [IDENTITY_MISSING]
    assert missing(parts(arm_gateway()), identity_id=OTHER_IDENTITY_ID + "-2") == [IDENTITY_MISSING]


def test_missing_a_versioned_secret_id_counts_as_different() -> None:
    gateway = parts(arm_gateway())
    ssl = named(gateway, "sslCertificates", agw.FRONTEND_CERTIFICATE)
    ssl["properties"]["keyVaultSecretId"] = f"{SECRET_ID}/{SECRET_VERSION}"
    assert missing(gateway) == [SSL_MISSING]


def test_missing_ssl_certificate_from_another_vault() -> None:
    other = "https://kv-bravo.vault.azure.net/secrets/frontend-certificate"
    assert missing(parts(arm_gateway()), secret_id=other) == [SSL_MISSING]


def test_missing_ssl_certificate_by_name_only() -> None:
    # the secret is there, but under another name: not meshflow's certificate
    gateway = parts(arm_gateway())
    named(gateway, "sslCertificates", agw.FRONTEND_CERTIFICATE)["name"] = "frontend-cert"
    assert missing(gateway) == [SSL_MISSING]


def test_missing_trusted_root_compares_content_not_encoding() -> None:
    gateway = parts(arm_gateway())
    root = named(gateway, "trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE)
    assert root["properties"]["data"] == agw.certificate_data(pem(ROOT))  # base64(PEM)
    root["properties"]["data"] = b64(der(ROOT))  # the same certificate, base64(DER)
    assert missing(gateway) == []


def test_missing_a_different_root() -> None:
    gateway = parts(arm_gateway())
    root = named(gateway, "trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE)
    root["properties"]["data"] = agw.certificate_data(pem(OTHER_ROOT))
    assert missing(gateway) == [ROOT_MISSING]
    root["properties"]["data"] = b64(der(OTHER_ROOT))
    assert missing(gateway) == [ROOT_MISSING]
    assert missing(agic_gateway(), root_pem=pem(OTHER_ROOT)) == [ROOT_MISSING]


@pytest.mark.parametrize("data", ["", "not base64!", None])
def test_missing_a_root_whose_data_is_unreadable(data: str | None) -> None:
    gateway = parts(arm_gateway())
    named(gateway, "trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE)["properties"][
        "data"
    ] = data
    assert missing(gateway) == [ROOT_MISSING]


def test_missing_a_root_held_only_under_another_name() -> None:
    # other-root of arm_gateway() holding the right certificate does not count
    gateway = arm_gateway()
    named(gateway, "trustedRootCertificates", "other-root")["properties"]["data"] = b64(der(ROOT))
    assert ROOT_MISSING in missing(gateway)


# --------------------------------------------------------------------------- with_meshflow_parts()

OWNED = {"sslCertificates", "trustedRootCertificates"}


@pytest.mark.parametrize("build", [arm_gateway, agic_gateway])
def test_with_parts_keeps_every_other_field(build: Callable[[], Json]) -> None:
    before = build()
    after = parts(before)
    assert {k: v for k, v in after.items() if k not in {"identity", "properties"}} == {
        k: v for k, v in before.items() if k not in {"identity", "properties"}
    }
    assert after["etag"] == ETAG
    assert after["properties"]["provisioningState"] == "Succeeded"
    assert {k: v for k, v in after["properties"].items() if k not in OWNED} == {
        k: v for k, v in before["properties"].items() if k not in OWNED
    }
    for collection, mine in (
        ("sslCertificates", agw.FRONTEND_CERTIFICATE),
        ("trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE),
    ):
        others_before = [i for i in before["properties"][collection] if i["name"] != mine]
        others_after = [i for i in after["properties"][collection] if i["name"] != mine]
        assert others_after == others_before
        assert others_after  # the fixtures hold one that is not meshflow's


def test_with_parts_keeps_agic_parts_exactly() -> None:
    after = parts(agic_gateway())
    props = after["properties"]
    assert [li["name"] for li in props["httpListeners"]] == [HTTPS_LISTENER, HTTP_LISTENER]
    assert [s["name"] for s in props["backendHttpSettingsCollection"]] == [
        SETTINGS,
        "defaulthttpsetting",
    ]
    assert [p["name"] for p in props["probes"]] == [
        "defaultprobe-Http",
        "defaultprobe-Https",
        PROBE,
    ]
    assert [p["name"] for p in props["backendAddressPools"]] == ["defaultaddresspool", POOL]
    assert len(props["requestRoutingRules"]) == 2
    assert named(after, "sslCertificates", "listener-certificate") == named(
        agic_gateway(), "sslCertificates", "listener-certificate"
    )
    assert named(after, "trustedRootCertificates", "other-root") == named(
        agic_gateway(), "trustedRootCertificates", "other-root"
    )
    assert agw.agic_problems(after, backend_host=ECHOSERVER_HOST, probe_port=PROBE_PORT) == []


def test_with_parts_sets_the_three_parts() -> None:
    after = parts(arm_gateway())
    assert named(after, "sslCertificates", agw.FRONTEND_CERTIFICATE) == {
        "name": agw.FRONTEND_CERTIFICATE,
        "properties": {"keyVaultSecretId": SECRET_ID},
    }
    assert named(after, "trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE) == {
        "name": agw.TRUSTED_ROOT_CERTIFICATE,
        "properties": {"data": agw.certificate_data(pem(ROOT))},
    }
    assert after["identity"]["type"] == "UserAssigned"
    assert after["identity"]["userAssignedIdentities"][IDENTITY_ID] == {}


def test_with_parts_replaces_an_existing_frontend_certificate() -> None:
    gateway = agic_gateway()
    named(gateway, "sslCertificates", agw.FRONTEND_CERTIFICATE)["properties"][
        "keyVaultSecretId"
    ] = f"{SECRET_ID}/{SECRET_VERSION}"
    named(gateway, "trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE)["properties"][
        "data"
    ] = b64(der(OTHER_ROOT))
    after = parts(gateway)
    names = [c["name"] for c in after["properties"]["sslCertificates"]]
    assert names.count(agw.FRONTEND_CERTIFICATE) == 1
    assert len(names) == len(gateway["properties"]["sslCertificates"])
    ssl = named(after, "sslCertificates", agw.FRONTEND_CERTIFICATE)
    assert ssl["properties"] == {"keyVaultSecretId": SECRET_ID}
    roots = [c["name"] for c in after["properties"]["trustedRootCertificates"]]
    assert roots.count(agw.TRUSTED_ROOT_CERTIFICATE) == 1
    root = named(after, "trustedRootCertificates", agw.TRUSTED_ROOT_CERTIFICATE)
    assert agw.certificate_der(root["properties"]["data"]) == der(ROOT)
    assert missing(after) == []


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("SystemAssigned", "SystemAssigned, UserAssigned"),
        ("SystemAssigned, UserAssigned", "SystemAssigned, UserAssigned"),
        ("UserAssigned", "UserAssigned"),
        ("None", "UserAssigned"),
        (None, "UserAssigned"),
    ],
)
def test_with_parts_identity_type(kind: str | None, expected: str) -> None:
    gateway = arm_gateway()
    gateway["identity"]["type"] = kind
    assert parts(gateway)["identity"]["type"] == expected


def test_with_parts_on_a_system_assigned_only_gateway() -> None:
    gateway = arm_gateway()
    gateway["identity"] = {
        "type": "SystemAssigned",
        "principalId": "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2918",
        "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    }
    identity = parts(gateway)["identity"]
    assert identity["type"] == "SystemAssigned, UserAssigned"
    assert identity["userAssignedIdentities"] == {IDENTITY_ID: {}}


def test_with_parts_keeps_other_user_assigned_identities() -> None:
    before = arm_gateway()
    identities = parts(before)["identity"]["userAssignedIdentities"]
    assert identities == {
        **before["identity"]["userAssignedIdentities"],
        IDENTITY_ID: {},
    }
    assert list(identities) == [OTHER_IDENTITY_ID, IDENTITY_ID]


def test_with_parts_keeps_the_identity_as_held_whatever_its_case() -> None:
    gateway = agic_gateway()
    identities = gateway["identity"]["userAssignedIdentities"]
    held = identities.pop(IDENTITY_ID)
    identities[IDENTITY_ID.lower()] = held
    after = parts(gateway)["identity"]["userAssignedIdentities"]
    assert after == {OTHER_IDENTITY_ID: identities[OTHER_IDENTITY_ID], IDENTITY_ID.lower(): held}


@pytest.mark.parametrize("build", [arm_gateway, agic_gateway, dict])
def test_with_parts_does_not_mutate_its_input(build: Callable[[], Json]) -> None:
    gateway = build()
    before = copy.deepcopy(gateway)
    after = parts(gateway)
    assert gateway == before
    # and shares nothing with it
    after.setdefault("properties", {}).setdefault("httpListeners", []).append({"name": "x"})
    after["identity"]["userAssignedIdentities"]["y"] = {}
    for item in after["properties"]["sslCertificates"]:
        item.setdefault("properties", {})["touched"] = True
    assert gateway == before


@pytest.mark.parametrize("build", [arm_gateway, agic_gateway, dict])
def test_with_parts_is_idempotent(build: Callable[[], Json]) -> None:
    once = parts(build())
    assert parts(once) == once


# --------------------------------------------------------------------------- frontend IP


def test_frontend_public_ip_id() -> None:
    assert agw.frontend_public_ip_id(arm_gateway()) == PUBLIC_IP_ID
    assert agw.frontend_public_ip_id(agic_gateway()) == PUBLIC_IP_ID


def test_frontend_public_ip_id_after_a_private_frontend() -> None:
    gateway = arm_gateway()
    gateway["properties"]["frontendIPConfigurations"] = [private_frontend(), public_frontend()]
    assert agw.frontend_public_ip_id(gateway) == PUBLIC_IP_ID


@pytest.mark.parametrize(
    "frontends",
    [[private_frontend()], [], None],
    ids=["private-only", "empty", "absent"],
)
def test_frontend_public_ip_id_none(frontends: list[Json] | None) -> None:
    gateway = arm_gateway()
    gateway["properties"]["frontendIPConfigurations"] = frontends
    assert agw.frontend_public_ip_id(gateway) is None


def test_frontend_public_ip_id_of_an_empty_document() -> None:
    assert agw.frontend_public_ip_id({}) is None


# --------------------------------------------------------------------------- agic_problems()


def agic_problems(gateway: Json) -> list[str]:
    return agw.agic_problems(gateway, backend_host=ECHOSERVER_HOST, probe_port=PROBE_PORT)


def test_agic_problems_none_once_agic_reconciled() -> None:
    assert agic_problems(agic_gateway()) == []


def test_agic_problems_all_on_a_gateway_agic_never_wrote() -> None:
    assert agic_problems(arm_gateway()) == [NO_LISTENER, NO_SETTINGS, NO_PROBE]
    assert agic_problems(parts(arm_gateway())) == [NO_LISTENER, NO_SETTINGS, NO_PROBE]
    assert agic_problems({}) == [NO_LISTENER, NO_SETTINGS, NO_PROBE]


def _listener_cert(gateway: Json, cert: str) -> None:
    https = named(gateway, "httpListeners", HTTPS_LISTENER)["properties"]
    https["sslCertificate"] = agic_ref("sslCertificates", cert)


def _no_https_listener(gateway: Json) -> None:
    gateway["properties"]["httpListeners"] = [
        li for li in gateway["properties"]["httpListeners"] if li["name"] != HTTPS_LISTENER
    ]


def _settings(gateway: Json, **changes: Any) -> None:
    named(gateway, "backendHttpSettingsCollection", SETTINGS)["properties"].update(changes)


def _probe(gateway: Json, **changes: Any) -> None:
    named(gateway, "probes", PROBE)["properties"].update(changes)


MUTATIONS: list[tuple[str, Callable[[Json], None], str]] = [
    (
        "listener-uses-another-certificate",
        lambda g: _listener_cert(g, "cert-istio-ingress-echoserver-tls"),
        NO_LISTENER,
    ),
    ("no-https-listener", _no_https_listener, NO_LISTENER),
    (
        "listener-without-certificate",
        lambda g: named(g, "httpListeners", HTTPS_LISTENER)["properties"].pop("sslCertificate"),
        NO_LISTENER,
    ),
    ("settings-over-http", lambda g: _settings(g, protocol="Http"), NO_SETTINGS),
    ("settings-trust-nothing", lambda g: _settings(g, trustedRootCertificates=[]), NO_SETTINGS),
    (
        "settings-trust-another-root",
        lambda g: _settings(
            g, trustedRootCertificates=[agic_ref("trustedRootCertificates", "other-root")]
        ),
        NO_SETTINGS,
    ),
    (
        "settings-without-trusted-roots",
        lambda g: named(g, "backendHttpSettingsCollection", SETTINGS)["properties"].pop(
            "trustedRootCertificates"
        ),
        NO_SETTINGS,
    ),
    (
        "settings-for-another-host",
        lambda g: _settings(g, hostName="echoserver.other.svc.cluster.local"),
        NO_SETTINGS,
    ),
    (
        "settings-without-host",
        lambda g: named(g, "backendHttpSettingsCollection", SETTINGS)["properties"].pop("hostName"),
        NO_SETTINGS,
    ),
    ("probe-wrong-port", lambda g: _probe(g, port=443), NO_PROBE),
    ("probe-wrong-path", lambda g: _probe(g, path="/healthz/ready"), NO_PROBE),
    ("probe-wrong-host", lambda g: _probe(g, host="localhost"), NO_PROBE),
    (
        "probe-without-port",
        lambda g: named(g, "probes", PROBE)["properties"].pop("port"),
        NO_PROBE,
    ),
]


@pytest.mark.parametrize(
    ("change", "problem"),
    [(m[1], m[2]) for m in MUTATIONS],
    ids=[m[0] for m in MUTATIONS],
)
def test_agic_problems_names_the_missing_piece(
    change: Callable[[Json], None], problem: str
) -> None:
    gateway = agic_gateway()
    change(gateway)
    assert agic_problems(gateway) == [problem]


def test_agic_problems_reports_every_missing_piece_at_once() -> None:
    gateway = agic_gateway()
    _listener_cert(gateway, "other")
    _settings(gateway, protocol="Http")
    _probe(gateway, port=8080)
    assert agic_problems(gateway) == [NO_LISTENER, NO_SETTINGS, NO_PROBE]


def test_agic_problems_reads_ids_case_insensitively() -> None:
    gateway = agic_gateway()
    https = named(gateway, "httpListeners", HTTPS_LISTENER)["properties"]
    https["sslCertificate"] = {"id": https["sslCertificate"]["id"].upper()}
    _settings(
        gateway,
        protocol="HTTPS",
        trustedRootCertificates=[
            {"id": f"{GATEWAY_ID}/TrustedRootCertificates/ROOT-CERTIFICATE".lower()}
        ],
    )
    assert agic_problems(gateway) == []


def test_agic_problems_one_matching_settings_among_others_is_enough() -> None:
    gateway = agic_gateway()
    stale = copy.deepcopy(named(gateway, "backendHttpSettingsCollection", SETTINGS))
    stale["name"] = "bp-istio-ingress-ingressgateway-80-8080-istio-ingress-application-gateway"
    stale["properties"].update(protocol="Http", port=8080, trustedRootCertificates=None)
    gateway["properties"]["backendHttpSettingsCollection"].insert(0, stale)
    assert agic_problems(gateway) == []


def test_agic_problems_other_probe_port() -> None:
    gateway = agic_gateway()
    assert agw.agic_problems(gateway, backend_host=ECHOSERVER_HOST, probe_port=443) == [
        f"no health probe for {ECHOSERVER_HOST} on port 443, path /"
    ]


# --------------------------------------------------------------------------- agic_http_problems()


def test_agic_http_problems_none() -> None:
    assert agw.agic_http_problems(agic_gateway()) == []
    assert agw.agic_http_problems(arm_gateway()) == []


def test_agic_http_problems_no_http_listener() -> None:
    gateway = agic_gateway()
    gateway["properties"]["httpListeners"] = [named(gateway, "httpListeners", HTTPS_LISTENER)]
    assert agw.agic_http_problems(gateway) == ["no HTTP listener"]


def test_agic_http_problems_listener_protocol_case() -> None:
    gateway = arm_gateway()
    named(gateway, "httpListeners", "appGatewayHttpListener")["properties"]["protocol"] = "HTTP"
    assert agw.agic_http_problems(gateway) == []


def test_agic_http_problems_no_rule() -> None:
    gateway = agic_gateway()
    gateway["properties"]["requestRoutingRules"] = []
    assert agw.agic_http_problems(gateway) == ["no request routing rule"]


def test_agic_http_problems_both() -> None:
    assert agw.agic_http_problems({}) == ["no HTTP listener", "no request routing rule"]
    assert agw.agic_http_problems({"properties": {"httpListeners": None}}) == [
        "no HTTP listener",
        "no request routing rule",
    ]


# --------------------------------------------------------------------------- endpoint and Ingress


def test_endpoint_problem_agree() -> None:
    assert agw.endpoint_problem("20.31.42.53", "20.31.42.53") is None


def test_endpoint_problem_no_status_yet() -> None:
    assert agw.endpoint_problem("20.31.42.53", None) == "the Ingress status has no address yet"


def test_endpoint_problem_mismatch_names_both_addresses() -> None:
    problem = agw.endpoint_problem("20.31.42.53", "51.4.3.2")
    assert problem is not None
    assert "51.4.3.2" in problem
    assert "20.31.42.53" in problem
    assert problem.startswith("the Ingress status says 51.4.3.2 but the App Gateway's public IP")


def ingress(*entries: Json) -> Json:
    """An Ingress as the API server returns it (networking.k8s.io/v1), status written by AGIC."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "istio-ingress-application-gateway", "namespace": "istio-ingress"},
        "spec": {"ingressClassName": "azure-application-gateway"},
        "status": {"loadBalancer": {"ingress": list(entries)}},
    }


def test_ingress_ip() -> None:
    assert agw.ingress_ip(ingress({"ip": "20.31.42.53"})) == "20.31.42.53"


def test_ingress_ip_skips_hostname_only_entries() -> None:
    status = ingress({"hostname": "gw.example.net"}, {"ip": "20.31.42.53"})
    assert agw.ingress_ip(status) == "20.31.42.53"


@pytest.mark.parametrize(
    "obj",
    [
        None,
        {},
        {"status": None},
        {"status": {}},
        {"status": {"loadBalancer": {}}},
        ingress(),
        ingress({"hostname": "gw.example.net"}),
        ingress({"ip": ""}),
    ],
)
def test_ingress_ip_none(obj: Json | None) -> None:
    assert agw.ingress_ip(obj) is None


def test_endpoint_problem_from_ingress_status() -> None:
    assert agw.endpoint_problem("20.31.42.53", agw.ingress_ip(ingress())) == (
        "the Ingress status has no address yet"
    )
    assert agw.endpoint_problem("20.31.42.53", agw.ingress_ip(ingress({"ip": "20.31.42.53"}))) is (
        None
    )
