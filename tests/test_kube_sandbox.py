"""The local control planes are real: verified TLS, controllers at work, CRD schemas enforced."""

from __future__ import annotations

import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from sandbox import kube, processes


def _api(cluster: kube.LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))


def _token(cluster: kube.LocalCluster) -> str:
    doc = yaml.safe_load(cluster.admin_kubeconfig.read_text())
    return str(doc["users"][0]["user"]["token"])


def _readyz(cluster: kube.LocalCluster, ctx: ssl.SSLContext) -> int:
    req = urllib.request.Request(
        f"{cluster.api_url}/readyz", headers={"Authorization": f"Bearer {_token(cluster)}"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
        return int(resp.status)


def test_each_cluster_serves_readyz_over_verified_tls(
    kube_clusters: list[kube.LocalCluster],
) -> None:
    for cluster in kube_clusters:
        ctx = ssl.create_default_context(cafile=str(cluster.ca_bundle))
        assert _readyz(cluster, ctx) == 200


def test_tls_is_not_trusted_without_the_cluster_ca(kube_clusters: list[kube.LocalCluster]) -> None:
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _readyz(kube_clusters[0], ssl.create_default_context())


def test_clusters_are_independent(kube_clusters: list[kube.LocalCluster]) -> None:
    alpha, bravo = kube_clusters
    assert alpha.api_url != bravo.api_url
    assert alpha.ca_bundle.read_bytes() != bravo.ca_bundle.read_bytes()
    # bravo's CA does not vouch for alpha's server
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        _readyz(alpha, ssl.create_default_context(cafile=str(bravo.ca_bundle)))


def test_service_account_token_secret_is_filled_by_the_controller_manager(
    kube_clusters: list[kube.LocalCluster],
) -> None:
    core = client.CoreV1Api(_api(kube_clusters[0]))
    core.create_namespaced_service_account("default", {"metadata": {"name": "token-probe"}})
    core.create_namespaced_secret(
        "default",
        {
            "metadata": {
                "name": "token-probe-token",
                "annotations": {"kubernetes.io/service-account.name": "token-probe"},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )
    deadline = time.monotonic() + 10
    data: dict[str, Any] = {}
    while time.monotonic() < deadline and "token" not in data:
        data = core.read_namespaced_secret("token-probe-token", "default").data or {}
        time.sleep(0.05)
    assert set(data) >= {"token", "ca.crt", "namespace"}


def _gateway(port_number: object) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "Gateway",
        "metadata": {"name": "gw-probe"},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": port_number, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*"],
                }
            ],
        },
    }


def test_istio_crd_schema_rejects_a_gateway_with_a_string_port(
    kube_clusters: list[kube.LocalCluster],
) -> None:
    custom = client.CustomObjectsApi(_api(kube_clusters[0]))
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(
            "networking.istio.io", "v1beta1", "default", "gateways", _gateway("eighty")
        )
    assert err.value.status == 422
    assert "spec.servers" in str(err.value.body)


def test_istio_crd_schema_accepts_a_valid_gateway(kube_clusters: list[kube.LocalCluster]) -> None:
    custom = client.CustomObjectsApi(_api(kube_clusters[1]))
    created = custom.create_namespaced_custom_object(
        "networking.istio.io", "v1beta1", "default", "gateways", _gateway(80)
    )
    assert created["spec"]["servers"][0]["port"]["number"] == 80


def test_secret_provider_class_crd_is_installed(kube_clusters: list[kube.LocalCluster]) -> None:
    custom = client.CustomObjectsApi(_api(kube_clusters[0]))
    spc = {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": "istio-tls"},
        "spec": {"provider": "azure", "parameters": {"keyvaultName": "kv", "objects": "array: []"}},
    }
    created = custom.create_namespaced_custom_object(
        "secrets-store.csi.x-k8s.io", "v1", "default", "secretproviderclasses", spc
    )
    assert created["spec"]["provider"] == "azure"
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(
            "secrets-store.csi.x-k8s.io",
            "v1",
            "default",
            "secretproviderclasses",
            {**spc, "metadata": {"name": "Not_A_DNS_Name"}},
        )
    assert err.value.status == 422


def test_writes_are_audited(kube_clusters: list[kube.LocalCluster]) -> None:
    core = client.CoreV1Api(_api(kube_clusters[1]))
    core.create_namespace({"metadata": {"name": "audit-probe"}})
    deadline = time.monotonic() + 5
    hits: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not hits:
        hits = [
            e
            for e in kube.audit_writes(kube_clusters[1], user="admin")
            if e.get("objectRef", {}).get("name") == "audit-probe"
        ]
        time.sleep(0.05)
    assert [h["verb"] for h in hits] == ["create"]


@pytest.mark.kube
def test_stop_leaves_no_process(tmp_path: Any) -> None:
    (cluster,) = kube.start_clusters(["solo"], tmp_path)
    assert cluster.is_running()
    assert len(processes.running_under(str(tmp_path))) >= 3
    cluster.stop()
    assert processes.running_under(str(tmp_path)) == []


@pytest.mark.kube
def test_a_process_is_recognised_as_ours_as_soon_as_spawn_returns(tmp_path: Any) -> None:
    # Regression: /proc/<pid>/environ can read empty right after exec (about 1 Python start in
    # 5 here); a "did it start?" check then saw no marker and never stopped the process.
    marker = str(tmp_path)
    try:
        for _ in range(30):
            started = processes.spawn(
                "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                log=tmp_path / "sleeper.log", marker=marker, cwd=tmp_path,
            )  # fmt: skip
            assert processes.is_running(started.pid, marker)
    finally:
        processes.stop(processes.running_under(marker))
    assert processes.running_under(marker) == []


def _crd_creates(cluster: kube.LocalCluster) -> list[str]:
    return [
        e["objectRef"]["name"]
        for e in kube.audit_writes(cluster, user="admin")
        if e["verb"] == "create" and e["objectRef"]["resource"] == "customresourcedefinitions"
    ]


@pytest.mark.kube
def test_restart_brings_back_what_was_killed_in_place(tmp_path: Any) -> None:
    (cluster,) = kube.start_clusters(["solo"], tmp_path)
    try:
        api = _api(cluster)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "survivor"}})
        missing = "secretproviderclasses.secrets-store.csi.x-k8s.io"
        client.ApiextensionsV1Api(api).delete_custom_resource_definition(missing)
        installed = _crd_creates(cluster)
        etcd, apiserver, kcm = cluster.pids
        for pid in (apiserver, etcd):
            os.kill(pid, signal.SIGKILL)
        while not (processes.has_exited(apiserver) and processes.has_exited(etcd)):
            time.sleep(0.01)

        restarted, names = kube.restart_cluster(cluster, kube.ensure_binaries())

        assert names == ["solo etcd", "solo kube-apiserver"]
        assert restarted.pids[2] == kcm  # the controller manager kept running
        assert restarted.is_running()
        assert restarted == kube.load_cluster(tmp_path / "solo")  # new PIDs recorded
        assert restarted.api_url == cluster.api_url
        api = _api(restarted)  # same kubeconfig: same URL, CA and token
        assert client.CoreV1Api(api).read_namespace("survivor").metadata.name == "survivor"
        assert _crd_creates(restarted) == [*installed, missing]  # only the missing CRD
        assert kube.restart_cluster(restarted, kube.ensure_binaries()) == (restarted, [])
    finally:
        processes.stop(processes.running_under(str(tmp_path)))
