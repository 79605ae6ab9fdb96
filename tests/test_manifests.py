"""Manifests: pure tables first, then the same objects sent to real API servers.

The server half relocates namespaced objects into a namespace of its own (so it shares the
session clusters safely) and uses server-side dry-run for cluster-scoped objects with fixed
names. Kubernetes 1.20 drops unknown fields silently (and prunes them from custom resources), so
every accepted object is also checked to come back with every field that was sent; for built-in
kinds the ``kubernetes`` client's own models already refuse unknown fields before sending.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from meshflow import istioctl as rel
from meshflow import manifests as m
from meshflow.kubeconfig import parse_kubeconfig, token_kubeconfig
from meshflow.manifests import ingress as ing
from meshflow.manifests.install import ISTIOD_CA_VOLUME, OPERATOR_FILES
from meshflow.spec import ClusterSpec, MeshSpec
from sandbox import kube

SPEC = MeshSpec.model_validate(
    {
        "environment": "dev",
        "mesh_id": "mesh1",
        "network": "network1",
        "istio_version": "1.27.3",
        "credentials_block": "azure",
        "key_vault_block": "vault",
        "clusters": [
            {"name": "alpha", "aks_block": "aks-alpha", "ingress": True, "sample_workload": True},
            {"name": "bravo", "aks_block": "aks-bravo"},
        ],
    }
)
ALPHA, BRAVO = SPEC.clusters
REV = "1-27-3"
KV = {
    "keyvault_name": "mf-kv",
    "tenant_id": "00000000-0000-0000-0000-00000000000a",
    "identity_client_id": "00000000-0000-0000-0000-00000000000b",
}
CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def object_key(obj: dict[str, Any]) -> tuple[str, str, str | None, str]:
    """``(apiVersion, kind, namespace, name)`` of a manifest (namespace None: cluster-wide)."""
    meta = obj["metadata"]
    return (str(obj["apiVersion"]), str(obj["kind"]), meta.get("namespace"), str(meta["name"]))


def _kubeconfig(cluster: str = "alpha", *, token: str | None = None) -> str:
    return token_kubeconfig(
        cluster_name=cluster, server="https://10.52.0.4:443", ca_pem=CA_PEM, token=token or "t"
    )


def _objects_entries(spc: dict[str, Any]) -> list[dict[str, str]]:
    # Decode like the Azure provider: a YAML `array:` of strings, each a YAML mapping.
    outer = yaml.safe_load(spc["spec"]["parameters"]["objects"])
    assert set(outer) == {"array"}
    assert all(isinstance(item, str) for item in outer["array"])
    return [yaml.safe_load(item) for item in outer["array"]]


# --------------------------------------------------------------------------- namespaces


@pytest.mark.parametrize(
    ("build", "name", "labels"),
    [
        (m.istio_system_namespace, "istio-system", None),
        (lambda: m.ingress_namespace(REV), "istio-ingress", {"istio.io/rev": REV}),
        (lambda: m.echoserver_namespace(REV), "echoserver", {"istio.io/rev": REV}),
    ],
)
def test_namespaces(build: Callable[[], dict[str, Any]], name: str, labels: Any) -> None:
    ns = build()
    assert object_key(ns) == ("v1", "Namespace", None, name)
    assert ns["metadata"].get("labels") == labels


# --------------------------------------------------------------------------- SecretProviderClass


def test_istiod_secret_provider_class_matches_step_04() -> None:
    spc = m.secret_provider_class(cluster="alpha", **KV)
    assert object_key(spc) == (
        "secrets-store.csi.x-k8s.io/v1",
        "SecretProviderClass",
        "istio-system",
        "istio-tls",
    )
    params = spc["spec"]["parameters"]
    assert spc["spec"]["provider"] == "azure"
    assert {k: v for k, v in params.items() if k != "objects"} == {
        "usePodIdentity": "false",
        "useVMManagedIdentity": "true",
        "userAssignedIdentityID": KV["identity_client_id"],
        "keyvaultName": "mf-kv",
        "tenantId": KV["tenant_id"],
    }
    assert all(isinstance(v, str) for v in params.values())  # the CRD wants map[string]string
    assert _objects_entries(spc) == [
        {"objectName": "alpha-ca-cert", "objectType": "secret", "objectAlias": "ca-key.pem"},
        {"objectName": "alpha-ca-cert", "objectType": "cert", "objectAlias": "ca-cert.pem"},
        {"objectName": "root-cert", "objectType": "secret", "objectAlias": "root-cert.pem"},
        {"objectName": "alpha-cert-chain", "objectType": "secret", "objectAlias": "cert-chain.pem"},
    ]


def test_objects_text_is_the_documented_block_layout() -> None:
    text = m.keyvault_objects_parameter([m.KeyVaultObject("root-cert", "secret", "root-cert.pem")])
    assert text == (
        "array:\n"
        "  - |\n"
        "    objectName: root-cert\n"
        "    objectType: secret\n"
        "    objectAlias: root-cert.pem\n"
    )


def test_ingress_secret_provider_class_matches_step_20() -> None:
    spc = m.ingress_secret_provider_class(**KV)
    assert object_key(spc)[2:] == ("istio-ingress", "istio-tls")
    assert _objects_entries(spc) == [
        {"objectName": "echoserver", "objectType": "secret", "objectAlias": "ca-key.pem"},
        {"objectName": "echoserver", "objectType": "cert", "objectAlias": "ca-cert.pem"},
    ]


@pytest.mark.parametrize("empty", ["keyvault_name", "tenant_id", "identity_client_id"])
def test_secret_provider_class_rejects_empty_arguments(empty: str) -> None:
    with pytest.raises(ValueError, match=empty):
        m.secret_provider_class(cluster="alpha", **(KV | {empty: " "}))


def test_objects_parameter_rejects_duplicate_aliases_and_empty_lists() -> None:
    dup = [m.KeyVaultObject("a", "secret", "x.pem"), m.KeyVaultObject("b", "cert", "x.pem")]
    with pytest.raises(ValueError, match="unique"):
        m.keyvault_objects_parameter(dup)
    with pytest.raises(ValueError, match="at least one"):
        m.keyvault_objects_parameter([])


# --------------------------------------------------------------------------- IstioOperator

# Field names of the IstioOperator Go types (istio/istio operator/pkg/apis/types.go). istioctl
# decodes with DisallowUnknownFields, so anything outside these sets fails the install.
_IOP_SPEC = {
    "profile", "installPackagePath", "hub", "tag", "namespace", "revision",
    "compatibilityVersion", "meshConfig", "components", "values", "unvalidatedValues",
}  # fmt: skip
_IOP_COMPONENTS = {
    "base", "pilot", "cni", "cni-windows", "ztunnel", "ztunnel-windows", "istiodRemote",
    "ingressGateways", "egressGateways",
}  # fmt: skip
_IOP_COMPONENT = {"enabled", "namespace", "hub", "tag", "k8s"}
_IOP_GATEWAY = _IOP_COMPONENT | {"name", "label"}
_IOP_K8S = {
    "affinity", "env", "hpaSpec", "imagePullPolicy", "nodeSelector", "podDisruptionBudget",
    "podAnnotations", "priorityClassName", "readinessProbe", "replicaCount", "resources",
    "service", "strategy", "tolerations", "serviceAnnotations", "securityContext", "volumes",
    "volumeMounts", "overlays",
}  # fmt: skip
_IOP_OVERLAY = {"apiVersion", "kind", "name", "patches"}
_IOP_PATCH = {"path", "value"}


def _check_iop_fields(iop: dict[str, Any]) -> None:
    assert set(iop) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(iop["spec"]) <= _IOP_SPEC
    components = iop["spec"].get("components", {})
    assert set(components) <= _IOP_COMPONENTS
    specs = [(c, _IOP_COMPONENT) for k, c in components.items() if not k.endswith("Gateways")]
    specs += [(g, _IOP_GATEWAY) for g in components.get("ingressGateways", [])]
    for component, allowed in specs:
        assert set(component) <= allowed
        k8s = component.get("k8s", {})
        assert set(k8s) <= _IOP_K8S
        for overlay in k8s.get("overlays", []):
            assert set(overlay) <= _IOP_OVERLAY
            assert all(set(p) <= _IOP_PATCH for p in overlay["patches"])


def test_istio_operator_matches_step_07() -> None:
    iop = m.istio_operator(SPEC, ALPHA)
    _check_iop_fields(iop)
    assert (iop["apiVersion"], iop["kind"]) == ("install.istio.io/v1alpha1", "IstioOperator")
    spec = iop["spec"]
    assert (spec["profile"], spec["revision"], spec["tag"]) == ("minimal", REV, "1.27.3")
    assert spec["meshConfig"] == {
        "accessLogFile": "/dev/stdout",
        "defaultConfig": {"proxyMetadata": {"PROXY_CONFIG_XDS_AGENT": "true"}},
    }
    assert spec["values"]["global"] == {
        "meshID": "mesh1",
        "multiCluster": {"clusterName": "alpha"},
        "network": "network1",
    }
    assert spec["values"]["gateways"] == {"istio-ingressgateway": {"injectionTemplate": "gateway"}}
    pilot = spec["components"]["pilot"]
    assert pilot["enabled"] is True
    assert pilot["k8s"]["env"] == [{"name": "ISTIO_MULTIROOT_MESH", "value": "true"}]
    assert pilot["k8s"]["overlays"] == [
        {
            "kind": "Deployment",
            "name": "istiod-1-27-3",
            "patches": [
                {
                    "path": "spec.template.spec.volumes.[name:cacerts]",
                    "value": {
                        "name": "cacerts",
                        "csi": {
                            "driver": "secrets-store.csi.k8s.io",
                            "readOnly": True,
                            "volumeAttributes": {"secretProviderClass": "istio-tls"},
                        },
                    },
                }
            ],
        }
    ]
    [gateway] = spec["components"]["ingressGateways"]
    assert gateway["name"] == "ingressgateway"
    assert gateway["namespace"] == "istio-ingress"
    assert gateway["enabled"] is True
    assert gateway["label"] == {"istio": "ingressgateway"}
    assert gateway["k8s"]["service"] == {"type": "ClusterIP"}
    assert "overlays" not in gateway["k8s"]


def test_node_affinity_prefers_system_nodes_and_requires_linux_aks_nodes() -> None:
    iop = m.istio_operator(SPEC, ALPHA)["spec"]["components"]
    for component in (iop["pilot"], iop["ingressGateways"][0]):
        node = component["k8s"]["affinity"]["nodeAffinity"]
        [preferred] = node["preferredDuringSchedulingIgnoredDuringExecution"]
        assert preferred["preference"]["matchExpressions"] == [
            {"key": "kubernetes.azure.com/mode", "operator": "In", "values": ["system"]}
        ]
        [term] = node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term["matchExpressions"] == [
            {"key": "kubernetes.azure.com/cluster", "operator": "Exists"},
            {"key": "type", "operator": "NotIn", "values": ["virtual-kubelet"]},
            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        ]


@pytest.mark.parametrize(("cluster", "enabled"), [(ALPHA, True), (BRAVO, False)])
def test_ingress_gateway_is_enabled_only_where_the_cluster_has_ingress(
    cluster: ClusterSpec, enabled: bool
) -> None:
    iop = m.istio_operator(SPEC, cluster)
    assert iop["spec"]["components"]["ingressGateways"][0]["enabled"] is enabled
    assert iop["spec"]["values"]["global"]["multiCluster"]["clusterName"] == cluster.name


def test_step_20_mounts_the_ingress_certificate_through_the_csi_driver() -> None:
    iop = m.istio_operator(SPEC, ALPHA, ingress_certificates=True)
    _check_iop_fields(iop)
    [overlay] = iop["spec"]["components"]["ingressGateways"][0]["k8s"]["overlays"]
    assert (overlay["kind"], overlay["name"]) == ("Deployment", "ingressgateway")
    [patch] = overlay["patches"]
    assert patch["path"] == "spec.template.spec.volumes.[name:ingressgateway-certs]"
    assert patch["value"]["csi"]["volumeAttributes"] == {"secretProviderClass": "istio-tls"}


def test_operator_files_are_yaml_that_merge_into_the_whole_operator() -> None:
    files = m.istio_operator_files(SPEC, ALPHA)
    assert tuple(files) == OPERATOR_FILES == ("mesh.yaml", "istiod.yaml", "ingress-gateway.yaml")
    docs = {name: yaml.safe_load(text) for name, text in files.items()}
    assert docs == m.istio_operator_documents(SPEC, ALPHA)
    for doc in docs.values():
        _check_iop_fields(doc)
        assert doc["spec"].get("profile", "minimal") == "minimal"
    for text in files.values():
        assert "&" not in text
        assert "*" not in text  # no YAML anchors or aliases
    merged: dict[str, Any] = {}
    for doc in docs.values():
        merged = _deep_merge(merged, doc)
    assert merged == m.istio_operator(SPEC, ALPHA)
    assert isinstance(docs["mesh.yaml"]["spec"]["tag"], str)  # 1.27.3 must not become a number


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        both_dicts = isinstance(v, dict) and isinstance(out.get(k), dict)
        assert both_dicts or k not in out or out[k] == v, f"files disagree on {k!r}"
        out[k] = _deep_merge(out[k], v) if both_dicts else v
    return out


def test_istioctl_install_flags_and_argv() -> None:
    flags = m.istioctl_install_flags(SPEC)
    assert rel.install_argv("istioctl", flags, ["run/mesh.yaml", "run/istiod.yaml"], "/k") == [
        "istioctl", "install", "-y", "--set", "profile=minimal", "--revision", "1-27-3",
        "--set", "tag=1.27.3", "-f", "run/mesh.yaml", "-f", "run/istiod.yaml",
        "--kubeconfig", "/k",
    ]  # fmt: skip
    explicit = SPEC.model_copy(update={"revision": "1-27-canary"})
    assert "1-27-canary" in m.istioctl_install_flags(explicit)
    assert m.istio_operator(explicit, ALPHA)["spec"]["components"]["pilot"]["k8s"]["overlays"][0][
        "name"
    ] == ("istiod-1-27-canary")
    with pytest.raises(ValueError, match="at least one"):
        rel.install_argv("istioctl", flags, [], "/k")


# Istio's overlay path semantics (operator/pkg/util/path.go + tpath): '.'-separated, a
# `[key:value]` element selects the list item whose key equals value, and the patch value
# replaces that item. Enough of it to apply the overlays to a rendered-like Deployment.
def _split_istio_path(path: str) -> list[str]:
    out: list[str] = []
    for part in path.split("."):
        bracket = part.find("[")
        out += [part[:bracket], part[bracket:]] if bracket > 0 else [part]
    return out


def _apply_overlay(obj: dict[str, Any], overlay: dict[str, Any]) -> None:
    for patch in overlay["patches"]:
        *parents, last = _split_istio_path(patch["path"])
        node: Any = obj
        for element in parents:
            node = node[element]
        key, value = last.strip("[]").split(":", 1)
        [index] = [i for i, item in enumerate(node) if item.get(key) == value]
        node[index] = copy.deepcopy(patch["value"])


def _rendered_istiod(name: str, namespace: str) -> dict[str, Any]:
    # The parts of Istio's istio-discovery deployment.yaml the overlay touches.
    labels = {"app": "istiod", "istio.io/rev": REV}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "discovery",
                            "image": "docker.io/istio/pilot:1.27.3",
                            "volumeMounts": [
                                {"name": "cacerts", "mountPath": "/etc/cacerts", "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "local-certs", "emptyDir": {"medium": "Memory"}},
                        {"name": "cacerts", "secret": {"secretName": "cacerts", "optional": True}},
                    ],
                },
            },
        },
    }


def _patched_istiod(namespace: str) -> dict[str, Any]:
    pilot = m.istio_operator(SPEC, ALPHA)["spec"]["components"]["pilot"]["k8s"]
    [overlay] = pilot["overlays"]
    deployment = _rendered_istiod(overlay["name"], namespace)
    _apply_overlay(deployment, overlay)
    deployment["spec"]["template"]["spec"]["affinity"] = pilot["affinity"]
    return deployment


def test_istiod_overlay_replaces_only_the_cacerts_volume() -> None:
    volumes = _patched_istiod("istio-system")["spec"]["template"]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["local-certs", ISTIOD_CA_VOLUME]
    assert volumes[1] == {
        "name": "cacerts",
        "csi": {
            "driver": "secrets-store.csi.k8s.io",
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": "istio-tls"},
        },
    }


# --------------------------------------------------------------------------- remote secrets


def _allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"]
        and (resource in r["resources"] or "*" in r["resources"])
        and verb in r["verbs"]
        for r in rules
    )


def test_reader_role_covers_what_a_remote_istiod_reads() -> None:
    role = m.reader_cluster_role(REV, SPEC.istio_version)
    assert object_key(role) == (
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        None,
        "istio-reader-clusterrole-1-27-3-istio-system",
    )
    rules = role["rules"]
    reads = [("", r) for r in ("pods", "services", "namespaces", "secrets", "nodes", "endpoints")]
    reads += [("discovery.k8s.io", "endpointslices"), ("networking.istio.io", "virtualservices")]
    reads += [("gateway.networking.k8s.io", "gateways"), ("apps", "replicasets")]
    reads += [("apiextensions.k8s.io", "customresourcedefinitions")]
    for group, resource in reads:
        for verb in ("get", "list", "watch"):
            assert _allows(rules, group, resource, verb), (group, resource, verb)
    assert _allows(rules, "authentication.k8s.io", "tokenreviews", "create")
    assert _allows(rules, "authorization.k8s.io", "subjectaccessreviews", "create")
    assert not _allows(rules, "", "secrets", "create")
    assert not _allows(rules, "", "pods", "delete")
    assert not _allows(rules, "", "configmaps", "list")  # 1.27 stopped reading them (#56838)


def test_reader_binding_service_account_and_token_secret() -> None:
    binding = m.reader_cluster_role_binding(REV)
    assert binding["metadata"]["name"] == m.reader_cluster_role_name(REV)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "istio-reader-clusterrole-1-27-3-istio-system",
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "istio-reader-service-account",
            "namespace": "istio-system",
        }
    ]
    assert object_key(m.reader_service_account()) == (
        "v1",
        "ServiceAccount",
        "istio-system",
        "istio-reader-service-account",
    )
    token = m.reader_token_secret()
    assert object_key(token)[2:] == (
        "istio-system",
        "istio-reader-service-account-istio-remote-secret-token",
    )
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"] == {
        "kubernetes.io/service-account.name": "istio-reader-service-account"
    }
    assert "data" not in token


def test_remote_secret_has_istioctls_shape() -> None:
    kubeconfig = _kubeconfig("alpha", token="reader-token")
    secret = m.remote_secret(source_cluster="alpha", kubeconfig=kubeconfig)
    assert object_key(secret) == ("v1", "Secret", "istio-system", "istio-remote-secret-alpha")
    assert secret["type"] == "Opaque"
    # istioctl's label, and meshflow's own: the only remote secrets it ever prunes.
    assert secret["metadata"]["labels"] == {
        "istio/multiCluster": "true",
        "app.kubernetes.io/managed-by": "meshflow",
    }
    assert secret["metadata"]["annotations"] == {"networking.istio.io/cluster": "alpha"}
    assert list(secret["data"]) == ["alpha"]
    decoded = base64.b64decode(secret["data"]["alpha"]).decode()
    assert decoded == kubeconfig
    access = parse_kubeconfig(decoded)
    assert (access.auth, access.token) == ("token", "reader-token")
    assert (access.server, access.ca_pem) == ("https://10.52.0.4:443", CA_PEM)


def test_remote_secret_refuses_kubeconfigs_istiod_would_reject() -> None:
    cert_kc = yaml.safe_load(_kubeconfig())
    cert_kc["users"][0]["user"] = {
        "client-certificate-data": base64.b64encode(b"cert").decode(),
        "client-key-data": base64.b64encode(b"key").decode(),
    }
    with pytest.raises(ValueError, match="token kubeconfigs only"):
        m.remote_secret(source_cluster="alpha", kubeconfig=yaml.safe_dump(cert_kc))
    for bad in ("Alpha", "alpha_1", "-alpha", ""):
        with pytest.raises(ValueError, match="DNS-1123"):
            m.remote_secret(source_cluster=bad, kubeconfig=_kubeconfig())


# --------------------------------------------------------------------------- sample workload


def test_echoserver_deployment_and_service() -> None:
    deploy = m.echoserver_deployment()
    assert object_key(deploy) == ("apps/v1", "Deployment", "echoserver", "echoserver")
    pod = deploy["spec"]["template"]
    assert deploy["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    assert pod["metadata"]["labels"] == {"run": "echoserver"}
    [container] = pod["spec"]["containers"]
    assert container["image"] == "gcr.io/google_containers/echoserver:1.10"
    assert container["ports"][0]["containerPort"] == 8080
    svc = m.echoserver_service()
    assert object_key(svc) == ("v1", "Service", "echoserver", "echoserver")
    assert svc["spec"]["selector"] == {"run": "echoserver"}
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, 8080)]


def test_cross_cluster_call_job() -> None:
    job = m.cross_cluster_call_job()
    assert object_key(job) == ("batch/v1", "Job", "echoserver", "echoserver-call")
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = job["spec"]["template"]
    assert pod["spec"]["restartPolicy"] == "Never"
    [container] = pod["spec"]["containers"]
    script = container["command"][-1]
    assert "curl -fsS -m 10 http://echoserver:8080/" in script
    assert script.rstrip().endswith("exit $rc")  # the call's status, not the proxy shutdown's
    config_annotation = json.loads(pod["metadata"]["annotations"]["proxy.istio.io/config"])
    assert config_annotation == {"holdApplicationUntilProxyStarts": True}
    assert object_key(m.cross_cluster_call_job(name="call-2"))[3] == "call-2"


# --------------------------------------------------------------------------- ingress (12-21)


def test_http_gateway_and_ingress_match_step_12() -> None:
    gateway, ingress = ing.http_gateway(), ing.http_ingress()
    assert object_key(gateway) == (
        "networking.istio.io/v1", "Gateway", "istio-ingress", "istio-ingressgateway"
    )  # fmt: skip
    assert gateway["spec"] == {
        "selector": {"istio": "ingressgateway"},  # the gateway pods' label (step 07)
        "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
    }
    assert gateway["spec"]["selector"] == m.INGRESS_GATEWAY_LABELS
    assert object_key(ingress) == (
        "networking.k8s.io/v1", "Ingress", "istio-ingress", "istio-ingress-application-gateway"
    )  # fmt: skip
    assert "annotations" not in ingress["metadata"]
    assert ingress["spec"] == {
        "ingressClassName": "azure-application-gateway",
        "rules": [{"http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "ingressgateway", "port": {"number": 80}}},
        }]}}],
    }  # fmt: skip


def test_virtual_service_matches_steps_14_and_21() -> None:
    vs = ing.virtual_service("10.1.2.3.nip.io")
    assert object_key(vs) == ("networking.istio.io/v1", "VirtualService", "istio-ingress",
                              "echoserver")  # fmt: skip
    assert vs["spec"] == {
        "hosts": ["10.1.2.3.nip.io"],
        "gateways": ["istio-ingress/istio-ingressgateway"],
        "http": [{
            "match": [{"uri": {"prefix": "/"}}],
            "route": [{"destination": {"host": "echoserver.echoserver.svc.cluster.local"}}],
        }],
    }  # fmt: skip
    assert ing.virtual_service(ing.ECHOSERVER_HOST)["spec"]["hosts"] == [ing.ECHOSERVER_HOST]


def test_tls_gateway_and_ingress_match_step_21() -> None:
    (server,) = ing.tls_gateway()["spec"]["servers"]
    assert server == {
        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
        "hosts": ["echoserver.echoserver.svc.cluster.local"],
        "tls": {
            "mode": "SIMPLE",
            "serverCertificate": "/etc/istio/ingressgateway-certs/ca-cert.pem",
            "privateKey": "/etc/istio/ingressgateway-certs/ca-key.pem",
        },
    }
    # The files are the aliases the ingress SecretProviderClass mounts (step 20).
    spc = m.ingress_secret_provider_class(**KV)
    aliases = {e["objectAlias"] for e in _objects_entries(spc)}
    assert {server["tls"]["serverCertificate"].rsplit("/", 1)[1],
            server["tls"]["privateKey"].rsplit("/", 1)[1]} == aliases  # fmt: skip
    ingress = ing.tls_ingress()
    prefix = "appgw.ingress.kubernetes.io/"
    assert ingress["metadata"]["annotations"] == {
        f"{prefix}appgw-ssl-certificate": "frontend-certificate",
        f"{prefix}ssl-redirect": "true",
        f"{prefix}backend-protocol": "https",
        f"{prefix}backend-hostname": "echoserver.echoserver.svc.cluster.local",
        f"{prefix}appgw-trusted-root-certificate": "root-certificate",
        f"{prefix}health-probe-hostname": "echoserver.echoserver.svc.cluster.local",
        f"{prefix}health-probe-port": "8443",
        f"{prefix}health-probe-path": "/",
    }
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"] == {"name": "ingressgateway", "port": {"number": 443}}


# --------------------------------------------------------------------------- bundles, determinism


def test_pre_and_post_install_order() -> None:
    pre = m.pre_install_manifests(SPEC, ALPHA, **KV)
    assert [object_key(o)[1:] for o in pre] == [
        ("Namespace", None, "istio-system"),
        ("Namespace", None, "istio-ingress"),
        ("SecretProviderClass", "istio-system", "istio-tls"),
        ("SecretProviderClass", "istio-ingress", "istio-tls"),  # step 20: ALPHA serves HTTPS
    ]
    assert [object_key(o)[1:] for o in m.pre_install_manifests(SPEC, BRAVO, **KV)] == [
        object_key(o)[1:] for o in pre[:3]
    ]
    http_only = SPEC.model_copy(
        update={"ingress": SPEC.ingress.model_copy(update={"https": False})}
    )
    assert len(m.pre_install_manifests(http_only, ALPHA, **KV)) == 3
    kinds = [object_key(o)[1] for o in m.post_install_manifests(SPEC, ALPHA)]
    assert kinds == [
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret",
        "Namespace", "Service", "Deployment",
    ]  # fmt: skip
    assert "Deployment" not in [object_key(o)[1] for o in m.post_install_manifests(SPEC, BRAVO)]


def _everything(cluster: ClusterSpec) -> list[dict[str, Any]]:
    return [
        *m.pre_install_manifests(SPEC, cluster, **KV),
        *m.post_install_manifests(SPEC, cluster),
        m.ingress_secret_provider_class(**KV),
        m.cross_cluster_call_job(),
        m.remote_secret(source_cluster=cluster.name, kubeconfig=_kubeconfig(cluster.name)),
        *_ingress_objects(),
        m.istio_operator(SPEC, cluster, ingress_certificates=True),
    ]


def _ingress_objects() -> list[dict[str, Any]]:
    return [
        ing.http_gateway(), ing.http_ingress(), ing.virtual_service("10.1.2.3.nip.io"),
        ing.tls_gateway(), ing.virtual_service(ing.ECHOSERVER_HOST), ing.tls_ingress(),
    ]  # fmt: skip


def test_same_input_same_output_and_no_shared_state() -> None:
    first = _everything(ALPHA)
    assert json.dumps(first) == json.dumps(_everything(ALPHA))
    assert m.istio_operator_files(SPEC, ALPHA) == m.istio_operator_files(SPEC, ALPHA)
    first[0]["metadata"]["name"] = "mutated"
    first[-1]["spec"]["components"]["pilot"]["k8s"]["affinity"].clear()
    assert _everything(ALPHA)[0]["metadata"]["name"] == "istio-system"
    assert m.istio_operator(SPEC, ALPHA)["spec"]["components"]["pilot"]["k8s"]["affinity"]
    assert json.dumps(_everything(ALPHA)) != json.dumps(_everything(BRAVO))


def test_to_yaml_round_trips() -> None:
    for obj in _everything(ALPHA):
        assert yaml.safe_load(m.to_yaml(obj)) == obj


# =========================================================================== real API servers


@dataclass
class Server:
    api: client.ApiClient
    namespace: str
    cluster: kube.LocalCluster


@pytest.fixture
def server(kube_clusters: list[kube.LocalCluster]) -> Iterator[Server]:
    """An admin client on the first cluster and a fresh namespace, removed afterwards."""
    cluster = kube_clusters[0]
    api = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    namespace = f"mf-test-manifests-{secrets.token_hex(4)}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    try:
        yield Server(api, namespace, cluster)
    finally:
        client.CoreV1Api(api).delete_namespace(namespace)
        api.close()


def _create(api: client.ApiClient, obj: dict[str, Any], *, dry_run: bool) -> tuple[int, Any]:
    """POST ``obj`` with the typed API for its kind; the status and the object the server kept."""
    ns = obj["metadata"].get("namespace")
    kw: dict[str, Any] = {"_preload_content": False} | ({"dry_run": "All"} if dry_run else {})
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    batch, rbac = client.BatchV1Api(api), client.RbacAuthorizationV1Api(api)
    custom = client.CustomObjectsApi(api)
    calls: dict[str, Callable[[], Any]] = {
        "Namespace": lambda: core.create_namespace(obj, **kw),
        "ServiceAccount": lambda: core.create_namespaced_service_account(ns, obj, **kw),
        "Secret": lambda: core.create_namespaced_secret(ns, obj, **kw),
        "Service": lambda: core.create_namespaced_service(ns, obj, **kw),
        "Deployment": lambda: apps.create_namespaced_deployment(ns, obj, **kw),
        "Job": lambda: batch.create_namespaced_job(ns, obj, **kw),
        "ClusterRole": lambda: rbac.create_cluster_role(obj, **kw),
        "ClusterRoleBinding": lambda: rbac.create_cluster_role_binding(obj, **kw),
        "SecretProviderClass": lambda: custom.create_namespaced_custom_object(
            "secrets-store.csi.x-k8s.io", "v1", ns, "secretproviderclasses", obj, **kw
        ),
        "Ingress": lambda: client.NetworkingV1Api(api).create_namespaced_ingress(ns, obj, **kw),
        "Gateway": lambda: custom.create_namespaced_custom_object(
            "networking.istio.io", "v1", ns, "gateways", obj, **kw
        ),
        "VirtualService": lambda: custom.create_namespaced_custom_object(
            "networking.istio.io", "v1", ns, "virtualservices", obj, **kw
        ),
    }
    resp = calls[obj["kind"]]()
    return int(resp.status), json.loads(resp.data)


def _relocated(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    moved = copy.deepcopy(obj)
    if "namespace" in moved["metadata"]:
        moved["metadata"]["namespace"] = namespace
    return moved


def _renamed(obj: dict[str, Any]) -> dict[str, Any]:
    renamed = copy.deepcopy(obj)
    renamed["metadata"]["name"] = f"{obj['metadata']['name']}-{secrets.token_hex(3)}"
    return renamed


def _assert_kept(sent: Any, kept: Any, where: str = "") -> None:
    """Every field sent came back unchanged: the 1.20 server drops unknown fields silently."""
    if isinstance(sent, dict):
        assert isinstance(kept, dict), where
        for key, value in sent.items():
            assert key in kept, f"server dropped {where}.{key}"
            _assert_kept(value, kept[key], f"{where}.{key}")
    elif isinstance(sent, list):
        assert isinstance(kept, list)
        assert len(kept) == len(sent), where
        for i, (s, k) in enumerate(zip(sent, kept, strict=True)):
            _assert_kept(s, k, f"{where}[{i}]")
    else:
        assert sent == kept, where


def _without_1_20_alpha_fields(obj: dict[str, Any]) -> dict[str, Any]:
    # Job.spec.ttlSecondsAfterFinished is behind the alpha TTLAfterFinished gate on 1.20 (the
    # server clears it); it is GA from 1.23, so every supported AKS version keeps it.
    if obj["kind"] != "Job":
        return obj
    trimmed = copy.deepcopy(obj)
    del trimmed["spec"]["ttlSecondsAfterFinished"]
    return trimmed


def _accept(api: client.ApiClient, obj: dict[str, Any], namespace: str) -> None:
    """Dry-run create ``obj`` (namespaced ones in ``namespace``); assert 201 and nothing dropped."""
    candidate = _relocated(obj, namespace)
    try:
        status, kept = _create(api, candidate, dry_run=True)
    except client.ApiException as exc:
        if exc.status != 409 or "namespace" in obj["metadata"]:
            raise
        # A fixed cluster-scoped name another test already created: validate a twin instead.
        candidate = _renamed(candidate)
        status, kept = _create(api, candidate, dry_run=True)
    assert status == 201, object_key(obj)
    _assert_kept(_without_1_20_alpha_fields(candidate), kept, "/".join(map(str, object_key(obj))))


@pytest.mark.kube
@pytest.mark.parametrize("cluster", [ALPHA, BRAVO], ids=lambda c: c.name)
def test_server_accepts_every_object_of_a_cluster(server: Server, cluster: ClusterSpec) -> None:
    objects = [o for o in _everything(cluster) if o["kind"] != "IstioOperator"]
    assert len(objects) >= 17
    for obj in objects:
        _accept(server.api, obj, server.namespace)


@pytest.mark.kube
def test_the_kept_fields_check_catches_what_the_crd_schema_prunes(server: Server) -> None:
    spc = _relocated(m.secret_provider_class(cluster="alpha", **KV), server.namespace)
    spc["spec"]["parameterz"] = {"typo": "dropped"}
    status, kept = _create(server.api, spc, dry_run=True)
    assert status == 201  # accepted...
    with pytest.raises(AssertionError, match=r"dropped \.spec\.parameterz"):
        _assert_kept(spc, kept)  # ...but pruned, which the check reports


@pytest.mark.kube
def test_server_accepts_the_istiod_deployment_as_the_overlay_rewrites_it(server: Server) -> None:
    # There is no IstioOperator CRD to validate against (istioctl reads the files itself), so
    # validate what the operator's overlay and affinity produce: the patched istiod Deployment.
    _accept(server.api, _patched_istiod(server.namespace), server.namespace)


def _malformed() -> list[tuple[str, dict[str, Any]]]:
    upper_ns = m.istio_system_namespace()
    upper_ns["metadata"]["name"] = "Istio-System"
    upper_spc = m.secret_provider_class(cluster="alpha", **KV)
    upper_spc["metadata"]["name"] = "Istio-TLS"
    objects_not_a_string = m.secret_provider_class(cluster="alpha", **KV)
    objects_not_a_string["spec"]["parameters"]["objects"] = {"array": []}
    bad_secret = m.remote_secret(source_cluster="alpha", kubeconfig=_kubeconfig())
    bad_secret["metadata"]["name"] = "Istio-Remote-Secret-alpha"
    bad_selector = m.echoserver_deployment()
    bad_selector["spec"]["selector"]["matchLabels"] = {"run": "other"}
    return [
        ("namespace with upper case", upper_ns),
        ("SecretProviderClass with upper case", upper_spc),
        ("SecretProviderClass objects not a string (CRD schema)", objects_not_a_string),
        ("Secret with upper case", bad_secret),
        ("Deployment selector not matching its pods", bad_selector),
    ]


@pytest.mark.kube
@pytest.mark.parametrize(("case", "obj"), _malformed(), ids=[c for c, _ in _malformed()])
def test_server_rejects_malformed_variants(server: Server, case: str, obj: dict[str, Any]) -> None:
    with pytest.raises(client.ApiException) as caught:
        _create(server.api, _relocated(obj, server.namespace), dry_run=True)
    assert caught.value.status == 422, case


def _wait_for_token(core: client.CoreV1Api, name: str, namespace: str) -> dict[str, str]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        data = core.read_namespaced_secret(name, namespace).data or {}
        if "token" in data:
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        time.sleep(0.05)
    raise AssertionError(f"the token controller did not fill {namespace}/{name}")


@pytest.mark.kube
def test_remote_secret_built_from_the_reader_token_gives_istiod_its_reads(
    server: Server, tmp_path: Path
) -> None:
    """Create the reader objects for real, then read the cluster as istiod would."""
    api, ns = server.api, server.namespace
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    suffix = secrets.token_hex(3)
    role = m.reader_cluster_role(REV, SPEC.istio_version)
    role["metadata"]["name"] += f"-{suffix}"
    binding = m.reader_cluster_role_binding(REV)
    binding["metadata"]["name"] = binding["roleRef"]["name"] = role["metadata"]["name"]
    binding["subjects"][0]["namespace"] = ns
    try:
        for obj in (m.reader_service_account(), m.reader_token_secret(), role, binding):
            status, kept = _create(api, _relocated(obj, ns), dry_run=False)
            assert status == 201
            _assert_kept(_relocated(obj, ns), kept)
        token = _wait_for_token(core, m.READER_TOKEN_SECRET, ns)
        kubeconfig = token_kubeconfig(
            cluster_name="alpha",
            server=server.cluster.api_url,
            ca_pem=token["ca.crt"].encode(),
            token=token["token"],
        )
        remote = _relocated(m.remote_secret(source_cluster="alpha", kubeconfig=kubeconfig), ns)
        assert _create(api, remote, dry_run=False)[0] == 201
        stored = core.read_namespaced_secret(remote["metadata"]["name"], ns)
        assert stored.data == remote["data"]  # exact read-back: base64 data, one key
        assert stored.metadata.labels == remote["metadata"]["labels"]
        assert stored.metadata.annotations == remote["metadata"]["annotations"]
        assert stored.type == "Opaque"

        # istiod's view: the kubeconfig from the secret, TLS verified against the SA's ca.crt.
        path = tmp_path / "remote.kubeconfig"
        path.write_text(base64.b64decode(stored.data["alpha"]).decode())
        reader = config.new_client_from_config(config_file=str(path))
        try:
            as_reader = client.CoreV1Api(reader)
            assert as_reader.list_pod_for_all_namespaces(limit=1).items is not None
            assert as_reader.list_secret_for_all_namespaces(limit=1).items is not None
            assert ns in {n.metadata.name for n in as_reader.list_namespace().items}
            with pytest.raises(client.ApiException) as denied:
                as_reader.create_namespace({"metadata": {"name": f"mf-denied-{suffix}"}})
            assert denied.value.status == 403
        finally:
            reader.close()
        user = f"system:serviceaccount:{ns}:{m.READER_SERVICE_ACCOUNT}"
        for group, resource in [("discovery.k8s.io", "endpointslices"), ("", "services")]:
            assert _can(api, user, group, resource, "watch"), resource
    finally:
        for delete, name in [
            (rbac.delete_cluster_role_binding, binding["metadata"]["name"]),
            (rbac.delete_cluster_role, role["metadata"]["name"]),
        ]:
            try:
                delete(name)
            except client.ApiException as exc:  # not created: keep the test's own error
                if exc.status != 404:
                    raise


def _can(api: client.ApiClient, user: str, group: str, resource: str, verb: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": {"group": group, "resource": resource, "verb": verb},
        },
    }
    result = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(result.status.allowed)


def test_only_remote_secrets_of_departed_members_are_pruned() -> None:
    from meshflow.manifests import departed_sources, managed_remote_secret_selector

    names = ["istio-remote-secret-alpha", "istio-remote-secret-gone", "unrelated-secret"]
    assert departed_sources(names, {"alpha", "bravo"}) == ["istio-remote-secret-gone"]
    assert departed_sources(names, {"alpha", "gone"}) == []
    assert managed_remote_secret_selector() == (
        "istio/multiCluster=true,app.kubernetes.io/managed-by=meshflow"
    )


# -- Reader-token rotation: pure ---------------------------------------------------------------

_STABLE = "istio-reader-service-account-istio-remote-secret-token"
_INTERIM = "istio-reader-service-account-istio-remote-secret-token-interim"


def test_a_rotated_reader_token_secret_is_install_s_secret_with_a_generation() -> None:
    from meshflow.manifests.multicluster import ReaderTokenSecret, rotated_reader_token_secret
    from meshflow.objects import satisfies

    for name in (_STABLE, _INTERIM):
        secret = rotated_reader_token_secret(ReaderTokenSecret(name, 3))
        assert object_key(secret) == ("v1", "Secret", "istio-system", name)
        assert secret["type"] == "kubernetes.io/service-account-token"
        assert secret["metadata"]["annotations"] == {
            "kubernetes.io/service-account.name": "istio-reader-service-account"
        }
        assert secret["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "meshflow",
            "meshflow.io/reader-token-generation": "3",
        }
        assert "data" not in secret
    # A later install applies reader_token_secret(): the rotated Secret (filled in by the
    # token controller) already satisfies it, so the install writes nothing.
    live = rotated_reader_token_secret(ReaderTokenSecret(_STABLE, 2))
    live["metadata"]["annotations"]["kubernetes.io/service-account.uid"] = "0a1b"
    live["data"] = {"token": "dA==", "ca.crt": "Y2E=", "namespace": "aXN0aW8tc3lzdGVt"}
    assert satisfies(live, m.reader_token_secret())
    assert not satisfies(live, rotated_reader_token_secret(ReaderTokenSecret(_STABLE, 4)))


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (("istio-reader-service-account-token-x7k2p", 1), "not a reader token Secret meshflow"),
        ((_STABLE, 0), "generations start at 1"),
        ((_INTERIM, -1), "generations start at 1"),
    ],
)
def test_a_rotated_reader_token_secret_refuses_other_names_and_generation_0(
    token: tuple[str, int], message: str
) -> None:
    from meshflow.manifests.multicluster import ReaderTokenSecret, rotated_reader_token_secret

    with pytest.raises(ValueError, match=message):
        rotated_reader_token_secret(ReaderTokenSecret(*token))


@pytest.mark.parametrize(
    ("labels", "generation"),
    [
        (None, 0),  # install's (and istioctl's) Secret
        ({"meshflow.io/reader-token-generation": "7"}, 7),
        ({"meshflow.io/reader-token-generation": "seven"}, 0),
        ({"meshflow.io/reader-token-generation": "-2"}, 0),
        ({"app": "other"}, 0),
    ],
)
def test_reader_token_generation_reads_the_label(
    labels: dict[str, str] | None, generation: int
) -> None:
    from meshflow.manifests.multicluster import reader_token_generation

    secret: dict[str, Any] = {"metadata": {"name": _STABLE}}
    if labels is not None:
        secret["metadata"]["labels"] = labels
    assert reader_token_generation(secret) == generation


def _hops(present: dict[str, int]) -> list[tuple[tuple[str, int] | None, tuple[str, int]]]:
    from meshflow.manifests.multicluster import reader_token_hops

    return [
        (None if h.old is None else (h.old.name, h.old.generation), (h.new.name, h.new.generation))
        for h in reader_token_hops(present)
    ]


@pytest.mark.parametrize(
    ("present", "hops"),
    [
        # Nothing interrupted: to the interim Secret and back to istioctl's name.
        ({_STABLE: 0}, [((_STABLE, 0), (_INTERIM, 1)), ((_INTERIM, 1), (_STABLE, 2))]),
        ({_STABLE: 2}, [((_STABLE, 2), (_INTERIM, 3)), ((_INTERIM, 3), (_STABLE, 4))]),
        # Stopped in the first step (a check failed): the interim Secret is reused.
        (
            {_STABLE: 2, _INTERIM: 3},
            [((_STABLE, 2), (_INTERIM, 3)), ((_INTERIM, 3), (_STABLE, 4))],
        ),
        # Stopped between the steps: istioctl's name is gone already.
        ({_INTERIM: 1}, [(None, (_INTERIM, 1)), ((_INTERIM, 1), (_STABLE, 2))]),
        # ... and an install recreated it meanwhile (unlabelled: generation 0): it goes first.
        ({_STABLE: 0, _INTERIM: 3}, [((_STABLE, 0), (_INTERIM, 3)), ((_INTERIM, 3), (_STABLE, 4))]),
        # Stopped in the second step: istioctl's name is newer; only the step back is left.
        ({_STABLE: 2, _INTERIM: 1}, [((_INTERIM, 1), (_STABLE, 2))]),
        # Other Secrets of the account (1.20's auto-created token) are not the rotation's.
        (
            {_STABLE: 0, "istio-reader-service-account-token-x7k2p": 0},
            [((_STABLE, 0), (_INTERIM, 1)), ((_INTERIM, 1), (_STABLE, 2))],
        ),
    ],
)
def test_reader_token_hops_rotate_once_or_finish_an_interrupted_rotation(
    present: dict[str, int], hops: list[tuple[tuple[str, int] | None, tuple[str, int]]]
) -> None:
    planned = _hops(present)
    assert planned == hops
    assert planned[-1][1][0] == _STABLE  # install and istioctl find the current token
    news = [new for _, new in planned]
    # A step never deletes what it, or a later step, writes into the remote secrets; the new
    # tokens' generations only grow.
    assert all(old not in news[i:] for i, (old, _) in enumerate(planned))
    assert [g for _, g in news] == sorted({g for _, g in news})


def test_reader_token_hops_need_a_reader_token_secret() -> None:
    with pytest.raises(ValueError, match="install the mesh first"):
        _hops({})
    with pytest.raises(ValueError, match="install the mesh first"):
        _hops({"istio-reader-service-account-token-x7k2p": 0})
