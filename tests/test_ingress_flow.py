"""Steps 12-22 end to end: the install's ingress stage and ``expose-mesh`` on the sandbox.

Real control planes (the objects pass the real API server and CRD schemas), the Azure
emulator's App Gateway, identities, role assignments and vault access policies through the real
SDK clients, a real Prefect server. No data plane and no AGIC run here: the probes and the AGIC
check must say "not run", and the reading code is tested on AGIC-shaped documents in
``tests/test_appgateway.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.network.models import ApplicationGateway
from cryptography.hazmat.primitives.serialization import Encoding
from kubernetes import client, config

import tasks.appgateway
from blocks import AksCluster, KeyVault, load_block
from flows.ingress import NO_DATA_PLANE, expose_mesh
from flows.install import MeshReport, install_mesh
from flows.reports import ClusterIngress
from meshflow import appgateway as agw
from meshflow import pki
from meshflow.spec import MeshSpec
from sandbox import kube
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer
from tasks.aks import cluster_facts, forget_credentials

REPO = Path(__file__).resolve().parent.parent
WRITE_METHODS = {"PUT", "POST", "PATCH", "DELETE"}


def _install(spec: MeshSpec) -> MeshReport:
    forget_credentials()
    return asyncio.run(install_mesh(spec))


def _admin(cluster: kube.LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))


class Audit:
    """The API server writes by meshflow (user admin) since this mark, on every cluster."""

    def __init__(self, clusters: list[kube.LocalCluster]) -> None:
        self.clusters = clusters
        self.marks = [len(kube.audit_writes(c, user="admin")) for c in clusters]

    def writes(self) -> list[dict[str, Any]]:
        time.sleep(1.0)  # the audit log is written asynchronously
        return [
            w for c, mark in zip(self.clusters, self.marks, strict=True)
            for w in kube.audit_writes(c, user="admin")[mark:]
        ]  # fmt: skip


def _azure_writes(emulator: AzureEmulator) -> list[str]:
    """Writes to ARM and Key Vault (fetching AKS credentials is a POST that writes nothing)."""
    return [
        f"{r['method']} {r['path']}" for r in emulator.requests_log()
        if r["method"] in WRITE_METHODS and "/oauth2/" not in r["path"]
        and not r["path"].endswith(("listClusterAdminCredential", "listClusterUserCredential"))
    ]  # fmt: skip


def _gateway(spec: MeshSpec) -> tuple[dict[str, Any], str]:
    ingress = spec.ingress_clusters[0]
    gateway_id = str(cluster_facts(ingress).app_gateway_id)
    sub, group, name = agw.parse_resource_id(gateway_id)
    block = load_block(AksCluster, ingress.aks_block)
    body = block.network_client(sub).application_gateways.get(group, name).as_dict()
    return body, gateway_id


def _root_pem(spec: MeshSpec) -> str:
    vault = load_block(KeyVault, spec.key_vault_block)
    return str(vault.secret_client().get_secret("root-cert").value)


@pytest.fixture(scope="module")
def installed(
    mesh_env: MeshSpec, azure_emulator: AzureEmulator, kube_clusters: list[kube.LocalCluster]
) -> tuple[MeshReport, list[dict[str, Any]]]:
    """The session's first install with ingress, and the API server writes it made.

    First because this file runs before the other install tests (pytest's file order): the
    HTTP objects are created here, then switched to TLS.
    """
    audit = Audit(kube_clusters)
    report = _install(mesh_env)
    return report, audit.writes()


def test_install_creates_the_objects_of_steps_12_14_20_21(
    installed: tuple[MeshReport, list[dict[str, Any]]],
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
) -> None:
    report, _ = installed
    assert report.ok
    (exposed,) = report.ingress
    assert exposed.writes == 6 + 4  # 2 + 1 + 3 objects; identity, role, policy, gateway
    alpha = kube_clusters[0]
    assert exposed.cluster == mesh_env.ingress_clusters[0].name == alpha.name
    custom = client.CustomObjectsApi(_admin(alpha))
    gateway = custom.get_namespaced_custom_object(
        "networking.istio.io", "v1", "istio-ingress", "gateways", "istio-ingressgateway"
    )
    (server,) = gateway["spec"]["servers"]
    assert server["port"] == {"number": 443, "name": "https", "protocol": "HTTPS"}
    assert server["tls"]["mode"] == "SIMPLE"
    vs = custom.get_namespaced_custom_object(
        "networking.istio.io", "v1", "istio-ingress", "virtualservices", "echoserver"
    )
    assert vs["spec"]["hosts"] == ["echoserver.echoserver.svc.cluster.local"]
    ingress = client.NetworkingV1Api(_admin(alpha)).read_namespaced_ingress(
        "istio-ingress-application-gateway", "istio-ingress"
    )
    assert ingress.spec.ingress_class_name == "azure-application-gateway"
    annotations = ingress.metadata.annotations
    assert annotations["appgw.ingress.kubernetes.io/appgw-ssl-certificate"] == (
        "frontend-certificate"
    )
    assert annotations["appgw.ingress.kubernetes.io/health-probe-port"] == "8443"
    spc = custom.get_namespaced_custom_object(
        "secrets-store.csi.x-k8s.io", "v1", "istio-ingress", "secretproviderclasses", "istio-tls"
    )
    assert "echoserver" in spc["spec"]["parameters"]["objects"]
    # Only the ingress cluster got them.
    bravo = client.CustomObjectsApi(_admin(kube_clusters[1]))
    with pytest.raises(client.ApiException) as absent:
        bravo.get_namespaced_custom_object(
            "networking.istio.io", "v1", "istio-ingress", "gateways", "istio-ingressgateway"
        )
    assert absent.value.status == 404


def test_the_http_objects_came_first_then_the_switch_to_tls(
    installed: tuple[MeshReport, list[dict[str, Any]]],
) -> None:
    # Steps 12 and 14 wrote the HTTP Gateway, Ingress and the nip.io VirtualService (accepted
    # by the API server and the CRD schema: a 201), step 21 switched them (a 200 patch).
    _, writes = installed
    ingress_writes = [
        (w["verb"], w["objectRef"]["resource"], w["responseStatus"]["code"])
        for w in writes
        if (w.get("objectRef") or {}).get("namespace") == "istio-ingress"
    ]
    for resource in ("gateways", "virtualservices", "ingresses"):
        verbs = [(verb, code) for verb, res, code in ingress_writes if res == resource]
        assert verbs == [("create", 201), ("patch", 200)], resource
    assert ("create", "secretproviderclasses", 201) in ingress_writes


def test_the_app_gateway_holds_both_certificates_by_reference_and_content(
    installed: tuple[MeshReport, list[dict[str, Any]]], mesh_env: MeshSpec
) -> None:
    body, _ = _gateway(mesh_env)
    props = body["properties"]
    (frontend,) = [c for c in props["sslCertificates"] if c["name"] == "frontend-certificate"]
    vault_url = load_block(KeyVault, mesh_env.key_vault_block).url.rstrip("/")
    secret_id = frontend["properties"]["keyVaultSecretId"]
    assert secret_id == f"{vault_url}/secrets/frontend-certificate"  # no version segment
    (root,) = [c for c in props["trustedRootCertificates"] if c["name"] == "root-certificate"]
    held = agw.certificate_der(root["properties"]["data"])
    (istio_root,) = pki.load_pem_chain(_root_pem(mesh_env).encode())
    assert held == istio_root.public_bytes(Encoding.DER)
    (identity,) = body["identity"]["userAssignedIdentities"]
    assert identity.endswith("/userAssignedIdentities/appgw-id")


def test_identity_role_and_access_policy_exist_exactly_once(
    installed: tuple[MeshReport, list[dict[str, Any]]],
    mesh_env: MeshSpec,
    azure_emulator: AzureEmulator,
) -> None:
    ingress = mesh_env.ingress_clusters[0]
    facts = cluster_facts(ingress)
    sub, group, _ = agw.parse_resource_id(str(facts.app_gateway_id))
    block = load_block(AksCluster, ingress.aks_block)
    identities = [
        i for i in block.identity_client(sub).user_assigned_identities.list_by_resource_group(group)
        if i.name == "appgw-id"
    ]  # fmt: skip
    assert len(identities) == 1
    (identity,) = identities
    roles = list(block.authorization_client(sub).role_assignments.list_for_scope(str(identity.id)))
    operator = [
        r for r in roles if str(r.role_definition_id).endswith(agw.MANAGED_IDENTITY_OPERATOR)
    ]
    assert [r.principal_id for r in operator] == [facts.agic_principal_id]
    vault = load_block(KeyVault, mesh_env.key_vault_block)
    held = vault.management_client().vaults.get(str(vault.resource_group), vault.vault_name)
    policies = [
        p for p in held.properties.access_policies or () if p.object_id == identity.principal_id
    ]
    assert len(policies) == 1
    assert [str(getattr(s, "value", s)).lower() for s in policies[0].permissions.secrets or ()] == [
        "get"
    ]


def test_probes_and_agic_say_not_run_without_a_data_plane(
    installed: tuple[MeshReport, list[dict[str, Any]]],
) -> None:
    report, _ = installed
    (exposed,) = report.ingress
    assert [(p.url.split(":")[0], p.expected_status, p.status) for p in exposed.probes] == [
        ("http", 404, "not run"), ("http", 200, "not run"), ("https", 200, "not run"),
    ]  # fmt: skip
    assert all("no data plane" in p.detail for p in exposed.probes)
    assert {(c.check, c.status) for c in exposed.checks} == {
        ("AGIC reconciled", "not run"), ("Ingress status", "not run"),
    }  # fmt: skip
    assert all("no ingress controller" in c.detail for c in exposed.checks)
    assert exposed.host == f"{exposed.endpoint.ip}.nip.io"
    assert exposed.certificates == ("frontend-certificate", "root-certificate")
    line = exposed.line()
    assert line.startswith(f"{exposed.cluster}: {exposed.host} -> {exposed.endpoint.ip}")
    assert "AGIC: not run: no ingress controller" in line
    assert f"; probes HTTP 404, HTTP 200, HTTPS 200 not run: {NO_DATA_PLANE}; " in line  # once
    assert "## Ingress" in report.markdown()
    assert "certificates on the gateway: `frontend-certificate`, `root-certificate`" in (
        exposed.markdown()
    )


def test_a_second_install_writes_nothing_anywhere(
    installed: tuple[MeshReport, list[dict[str, Any]]],
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
    emulator: AzureEmulator,
) -> None:
    audit = Audit(kube_clusters)
    again = _install(mesh_env)
    assert again.writes == 0
    assert audit.writes() == []
    assert _azure_writes(emulator) == []
    (exposed,) = again.ingress
    assert exposed.probes[0].detail == "not run: the gateway already serves HTTPS"
    assert {g.action for g in exposed.gateway} == {"unchanged"}
    assert exposed.istio is not None
    assert exposed.istio.action == "unchanged"


def test_expose_http_only_never_steps_back_from_https(
    installed: tuple[MeshReport, list[dict[str, Any]]],
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
    emulator: AzureEmulator,
) -> None:
    audit = Audit(kube_clusters)
    report = asyncio.run(expose_mesh(mesh_env, http_only=True))
    assert report.writes == 0
    assert audit.writes() == []
    assert _azure_writes(emulator) == []


def _expose_in_child(spec_file: Path, server: PrefectServer, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c",
         "import asyncio, sys; from flows.ingress import expose_mesh; "
         "from meshflow.spec import MeshSpec; "
         "asyncio.run(expose_mesh(MeshSpec.model_validate_json(open(sys.argv[1]).read())))",
         str(spec_file)],
        cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PREFECT_API_URL": server.api_url,
             "PREFECT_HOME": str(server.database.parent)},
    )  # fmt: skip


def _strip_meshflow_parts(spec: MeshSpec, *, agic_listener: bool) -> None:
    """The gateway without meshflow's certificates, as before step 17 (and an AGIC listener)."""
    body, gateway_id = _gateway(spec)
    props = body["properties"]
    props["sslCertificates"] = [
        c for c in props.get("sslCertificates") or () if c["name"] != "frontend-certificate"
    ]
    props["trustedRootCertificates"] = [
        c for c in props.get("trustedRootCertificates") or () if c["name"] != "root-certificate"
    ]
    if agic_listener:
        port = props["frontendPorts"][0]
        others = [li for li in props.get("httpListeners") or () if li["name"] != "fl-agic-written"]
        props["httpListeners"] = [*others, {
            "name": "fl-agic-written",
            "properties": {
                "frontendIPConfiguration": {"id": props["frontendIPConfigurations"][0]["id"]},
                "frontendPort": {"id": port["id"]},
                "protocol": "Http",
            },
        }]  # fmt: skip
    sub, group, name = agw.parse_resource_id(gateway_id)
    block = load_block(AksCluster, spec.ingress_clusters[0].aks_block)
    block.network_client(sub).application_gateways.begin_create_or_update(
        group, name, ApplicationGateway(body)
    ).result()


def _listener_names(spec: MeshSpec) -> list[str]:
    return [li["name"] for li in _gateway(spec)[0]["properties"].get("httpListeners") or ()]


def test_two_exposes_started_together_end_with_both_certificates(
    installed: tuple[MeshReport, list[dict[str, Any]]],
    mesh_env: MeshSpec,
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    _strip_meshflow_parts(mesh_env, agic_listener=True)
    spec_file = tmp_path / "mesh.json"
    spec_file.write_text(mesh_env.model_dump_json())
    children = [_expose_in_child(spec_file, prefect_server, tmp_path / f"{i}.log") for i in (1, 2)]
    for i, child in enumerate(children, 1):
        assert child.wait(timeout=600) == 0, (tmp_path / f"{i}.log").read_text()[-3000:]
    body, _ = _gateway(mesh_env)
    names = {c["name"] for c in body["properties"]["sslCertificates"]}
    roots = {c["name"] for c in body["properties"]["trustedRootCertificates"]}
    assert "frontend-certificate" in names and "root-certificate" in roots  # noqa: PT018
    assert "fl-agic-written" in _listener_names(mesh_env)  # what AGIC wrote stays


def test_a_write_between_read_and_put_is_a_412_and_neither_is_lost(
    installed: tuple[MeshReport, list[dict[str, Any]]],
    mesh_env: MeshSpec,
    emulator: AzureEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # AGIC writes the gateway after meshflow read it: meshflow's PUT carries the old etag, ARM
    # answers 412, meshflow reads again and writes on top of AGIC's change.
    _strip_meshflow_parts(mesh_env, agic_listener=False)
    real_read = tasks.appgateway._read
    raced: list[str] = []

    def read_then_agic_writes(*args: Any) -> tuple[dict[str, Any], str]:
        seen = real_read(*args)
        if not raced:
            raced.append(seen[1])
            _strip_meshflow_parts(mesh_env, agic_listener=True)
        return seen

    monkeypatch.setattr(tasks.appgateway, "_read", read_then_agic_writes)
    emulator.clear_log()
    root = _root_pem(mesh_env)
    ingress = mesh_env.ingress_clusters[0]
    facts = cluster_facts(ingress)
    (*_, change) = tasks.appgateway.ensure_gateway(ingress, facts, mesh_env.key_vault_block, root)
    assert change.action == "updated"
    puts = [
        r["status"] for r in emulator.requests_log()
        if r["method"] == "PUT" and "/applicationGateways/" in r["path"]
    ]  # fmt: skip
    assert puts[-2:] == [412, 201] or puts[-2:] == [412, 200]
    body, _ = _gateway(mesh_env)
    vault_url = load_block(KeyVault, mesh_env.key_vault_block).url.rstrip("/")
    (identity_id,) = body["identity"]["userAssignedIdentities"]
    secret_id = f"{vault_url}/secrets/frontend-certificate"
    assert agw.missing(body, identity_id=identity_id, secret_id=secret_id, root_pem=root) == []
    assert "fl-agic-written" in _listener_names(mesh_env)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frontend_pfx_block": "no-such-pfx"}, "no-such-pfx"),
        ({"ingress": {"host_pattern": "{ip}.not a name"}}, "not a DNS name"),
        ({"clusters": "no-sample"}, "no cluster runs the sample workload"),
    ],
)
def test_bad_ingress_settings_are_refused_before_any_write(
    installed: tuple[MeshReport, list[dict[str, Any]]],
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
    emulator: AzureEmulator,
    change: dict[str, Any],
    message: str,
) -> None:
    bad: dict[str, Any] = json.loads(mesh_env.model_dump_json())
    if change.get("clusters") == "no-sample":
        for c in bad["clusters"]:
            c["sample_workload"] = False
    else:
        bad.update(change)
    _strip_meshflow_parts(mesh_env, agic_listener=False)  # so that a run would have to write
    emulator.clear_log()
    audit = Audit(kube_clusters)
    with pytest.raises(Exception, match=message) as refused:
        asyncio.run(expose_mesh(bad))
    assert audit.writes() == []
    assert _azure_writes(emulator) == []
    if "pfx" in message:
        assert "Secret" in str(refused.value)  # says which block, of which type, to create


def test_expose_restores_what_was_removed(
    installed: tuple[MeshReport, list[dict[str, Any]]], mesh_env: MeshSpec
) -> None:
    _strip_meshflow_parts(mesh_env, agic_listener=False)
    report = asyncio.run(expose_mesh(mesh_env))
    (exposed,) = report.clusters
    assert isinstance(exposed, ClusterIngress)
    assert [g.action for g in exposed.gateway][-1] == "updated"
    assert report.writes == 1
    assert asyncio.run(expose_mesh(mesh_env)).writes == 0


def _write_as_agic(spec: MeshSpec, *, reconciled: bool) -> None:
    """What AGIC writes from the HTTPS Ingress (names as AGIC gives them), or none of it."""
    body, gateway_id = _gateway(spec)
    props = body["properties"]

    def ref(collection: str, name: str) -> dict[str, str]:
        return {"id": f"{gateway_id}/{collection}/{name}"}

    host, bp, pb = "echoserver.echoserver.svc.cluster.local", "bp-istio-ingress-443", "pb-istio-443"
    https_port = next(p for p in props["frontendPorts"] if p["properties"]["port"] == 443)
    parts: dict[str, list[dict[str, Any]]] = {
        "backendAddressPools": [{"name": "pool-istio-443", "properties": {
            "backendAddresses": [{"ipAddress": "10.244.0.10"}]}}],
        "probes": [{"name": pb, "properties": {
            "protocol": "Https", "host": host, "path": "/", "port": 8443, "interval": 30,
            "timeout": 30, "unhealthyThreshold": 3}}],
        "backendHttpSettingsCollection": [{"name": bp, "properties": {
            "port": 8443, "protocol": "Https", "hostName": host, "probe": ref("probes", pb),
            "trustedRootCertificates": [ref("trustedRootCertificates", "root-certificate")]}}],
        "httpListeners": [{"name": "fl-https-agic", "properties": {
            "frontendIPConfiguration": {"id": props["frontendIPConfigurations"][0]["id"]},
            "frontendPort": {"id": https_port["id"]}, "protocol": "Https",
            "sslCertificate": ref("sslCertificates", "frontend-certificate")}}],
        "requestRoutingRules": [{"name": "rr-https-agic", "properties": {
            "ruleType": "Basic", "priority": 19500,
            "httpListener": ref("httpListeners", "fl-https-agic"),
            "backendAddressPool": ref("backendAddressPools", "pool-istio-443"),
            "backendHttpSettings": ref("backendHttpSettingsCollection", bp)}}],
    }  # fmt: skip
    for collection, items in parts.items():
        props[collection] = items if reconciled else []
    sub, group, name = agw.parse_resource_id(gateway_id)
    block = load_block(AksCluster, spec.ingress_clusters[0].aks_block)
    block.network_client(sub).application_gateways.begin_create_or_update(
        group, name, ApplicationGateway(body)
    ).result()


def _ingress_status(cluster: kube.LocalCluster, ip: str | None) -> None:
    status = {"loadBalancer": {"ingress": [{"ip": ip}] if ip else []}}
    client.NetworkingV1Api(_admin(cluster)).patch_namespaced_ingress_status(
        "istio-ingress-application-gateway", "istio-ingress", {"status": status}
    )


def test_what_agic_did_is_read_back_from_arm_and_the_ingress_status(
    installed: tuple[MeshReport, list[dict[str, Any]]],
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
) -> None:
    # No AGIC runs here: write what it would (gateway parts, Ingress status) and read it back.
    ingress, alpha = mesh_env.ingress_clusters[0], kube_clusters[0]
    facts = cluster_facts(ingress)
    ip = tasks.appgateway.gateway_endpoint(ingress, facts).ip

    def check() -> dict[str, tuple[str, str]]:
        found = tasks.appgateway.agic_reconciled(
            ingress, facts, ip=ip, tls=True, controller_ready=True, wait_seconds=0.5
        )
        return {c.check: (c.status, c.detail) for c in found}

    try:
        _write_as_agic(mesh_env, reconciled=True)
        _ingress_status(alpha, ip)
        assert check() == {
            "AGIC reconciled": ("passed", "listener, settings and probe"),
            "Ingress status": ("passed", f"{ip}, as ARM says"),
        }
        _ingress_status(alpha, "198.51.100.7")  # another controller's address
        status, detail = check()["Ingress status"]
        assert status == "failed"
        assert "198.51.100.7" in detail
        assert ip in detail
        _write_as_agic(mesh_env, reconciled=False)
        _ingress_status(alpha, None)
        (status, detail), (ingress_state, ingress_detail) = check().values()
        assert status == "failed"
        assert detail.startswith("no HTTPS listener uses frontend-certificate; ")
        assert detail.endswith(" after 0.5 s")
        assert ingress_state == "failed"
        assert ingress_detail.startswith("the Ingress status has no address yet")
    finally:
        _write_as_agic(mesh_env, reconciled=False)
        _ingress_status(alpha, None)
