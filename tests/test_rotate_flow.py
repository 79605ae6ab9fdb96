"""rotate_certificates end to end: real control planes, the Azure emulator, a real Prefect server.

The sandbox has no kubelet, so no pod mounts anything: the wait for the new versions reports
"not run: no pods" and istiod is not restarted; the mount check itself is exercised with
SecretProviderClassPodStatus objects written as the CSI driver writes them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from kubernetes import config

from flows.install import MeshReport, install_mesh
from flows.rotate import rotate_certificates
from flows.verify import verify_access
from meshflow.errors import InvalidError
from meshflow.rotation import RotationReport
from meshflow.spec import MeshSpec
from sandbox import kube
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer
from tasks.aks import forget_credentials
from tasks.kube import mounted_versions
from tasks.kube_client import request_json
from tests.writes import WRITES

SPC = "/apis/secrets-store.csi.x-k8s.io/v1/namespaces/istio-system/secretproviderclasses/istio-tls"


def _vault_writes(emulator: AzureEmulator, since: int) -> list[str]:
    return [
        f"{r['method']} {r['path']}" for r in emulator.requests_log()[since:]
        if r["method"] in WRITES and r["status"] < 400
        and not r["path"].startswith("/subscriptions") and "/oauth2/" not in r["path"]
        and not r["path"].endswith("/sign")
    ]  # fmt: skip


def _admin(cluster: kube.LocalCluster) -> Any:
    return config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))


def _rotate(spec: MeshSpec, **kwargs: Any) -> RotationReport:
    forget_credentials()
    return asyncio.run(rotate_certificates(spec, **kwargs))


@pytest.fixture(scope="module")
def installed(installed_mesh: MeshReport) -> MeshReport:
    return installed_mesh


@pytest.fixture(scope="module")
def forced(
    installed: MeshReport, mesh_env: MeshSpec, azure_emulator: AzureEmulator,
    kube_clusters: list[kube.LocalCluster],
) -> tuple[RotationReport, dict[str, Any]]:  # fmt: skip
    """A forced rotation, with what the vault and the clusters held before it."""
    root = [o for o in installed.pki.objects if o.name in ("root-cert", "istio-root-ca-key")]
    spcs = [request_json(_admin(c), "GET", SPC)["spec"] for c in kube_clusters]
    mark = len(azure_emulator.requests_log())
    report = _rotate(mesh_env, force=True)
    return report, {"root": root, "spcs": spcs, "mark": mark}


def test_a_forced_rotation_reissues_every_intermediate_and_keeps_the_root(
    forced: tuple[RotationReport, dict[str, Any]], installed: MeshReport, mesh_env: MeshSpec,
    azure_emulator: AzureEmulator, kube_clusters: list[kube.LocalCluster],
) -> None:  # fmt: skip
    report, before = forced
    rows = {(r.cluster, r.object): r for r in report.certificates}
    for c in mesh_env.clusters:
        ca, chain = rows[(c.name, f"{c.name}-ca-cert")], rows[(c.name, f"{c.name}-cert-chain")]
        assert ca.action == "reissued" and ca.reason == "forced"  # noqa: PT018
        assert ca.new_version and ca.new_version != ca.old_version  # noqa: PT018
        assert chain.action == "rolled" and chain.new_version != chain.old_version  # noqa: PT018
    assert rows[("mesh", "echoserver")].action == "reissued"
    writes = _vault_writes(azure_emulator, before["mark"])
    assert not any("istio-root-ca" in w or w.endswith("/secrets/root-cert") for w in writes)
    # The clusters' SecretProviderClasses are untouched: they name objects, not versions, so
    # they now point at the new versions.
    assert [request_json(_admin(c), "GET", SPC)["spec"] for c in kube_clusters] == before["spcs"]
    assert all("objectVersion" not in str(spc) for spc in before["spcs"])
    assert {m.status for m in report.mounts} == {"not run: no pods"}
    assert {r.action for r in report.restarts} == {"not run: no pods"}
    assert report.frontend is not None and report.frontend.auto_renew  # noqa: PT018
    assert report.frontend.unversioned == tuple(c.name for c in mesh_env.ingress_clusters)
    assert report.problems == []


def test_after_a_rotation_verify_is_clean_and_install_finds_nothing_to_do(
    forced: tuple[RotationReport, dict[str, Any]], mesh_env: MeshSpec,
) -> None:  # fmt: skip
    access = asyncio.run(verify_access(mesh_env))
    assert len(access.clusters) == len(mesh_env.clusters)
    forget_credentials()
    again = asyncio.run(install_mesh(mesh_env))
    assert again.ok, again.markdown()
    assert again.writes == 0
    issued = {r.new_version for r in forced[0].certificates if r.new_version}
    assert {o.version for c in again.clusters for o in c.ca} <= issued


def test_a_second_rotation_with_the_default_threshold_writes_nothing(
    forced: tuple[RotationReport, dict[str, Any]], mesh_env: MeshSpec,
    azure_emulator: AzureEmulator, kube_clusters: list[kube.LocalCluster],
) -> None:  # fmt: skip
    mark = len(azure_emulator.requests_log())
    audit = sum(len(kube.audit_writes(c, user="admin")) for c in kube_clusters)
    report = _rotate(mesh_env)
    assert report.written == []
    assert {r.action for r in report.certificates} == {"kept"}
    assert _vault_writes(azure_emulator, mark) == []
    time.sleep(1.0)  # the audit log is written asynchronously
    assert sum(len(kube.audit_writes(c, user="admin")) for c in kube_clusters) == audit


def test_a_dry_run_lists_what_would_be_reissued_and_writes_nothing(
    forced: tuple[RotationReport, dict[str, Any]], mesh_env: MeshSpec,
    azure_emulator: AzureEmulator, kube_clusters: list[kube.LocalCluster],
) -> None:  # fmt: skip
    mark = len(azure_emulator.requests_log())
    audit = sum(len(kube.audit_writes(c, user="admin")) for c in kube_clusters)
    # The leaf (365 days) is within a 400-day threshold, the intermediates (730) are not.
    wide = {(r.object, r.action) for r in _rotate(mesh_env, threshold_days=400, dry_run=True)
            .certificates}  # fmt: skip
    assert ("echoserver", "would reissue") in wide
    assert {a for o, a in wide if o != "echoserver"} == {"kept"}
    plan = _rotate(mesh_env, force=True, dry_run=True)
    actions = {(r.object, r.action) for r in plan.certificates}
    for c in mesh_env.clusters:
        assert (f"{c.name}-ca-cert", "would reissue") in actions
        assert (f"{c.name}-cert-chain", "would roll") in actions
    assert plan.lines()[0].startswith("certificate plan (dry run, nothing written)")
    assert _vault_writes(azure_emulator, mark) == []
    time.sleep(1.0)
    assert sum(len(kube.audit_writes(c, user="admin")) for c in kube_clusters) == audit


def test_a_threshold_as_long_as_the_validity_is_refused_before_anything(
    mesh_env: MeshSpec, azure_emulator: AzureEmulator
) -> None:
    mark = len(azure_emulator.requests_log())
    with pytest.raises(InvalidError, match=r"rotation_threshold_days \(730\) must be shorter"):
        _rotate(mesh_env, threshold_days=730)
    assert azure_emulator.requests_log()[mark:] == []


def _events(server: PrefectServer, prefix: str, since: str) -> list[dict[str, Any]]:
    body = {"filter": {"event": {"prefix": [prefix]}, "occurred": {"since": since}}, "limit": 50}
    reply = httpx.post(f"{server.api_url}/events/filter", json=body, timeout=10)
    reply.raise_for_status()
    return list(reply.json()["events"])


def test_each_certificate_of_a_rotation_is_an_event(
    forced: tuple[RotationReport, dict[str, Any]], mesh_env: MeshSpec,
    prefect_server: PrefectServer,
) -> None:  # fmt: skip
    report = forced[0]
    since = "2000-01-01T00:00:00Z"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reissued = [
            e for e in _events(prefect_server, "meshflow.certificate.reissued", since)
            if e["payload"].get("new_version") in {r.new_version for r in report.written}
        ]  # fmt: skip
        if len(reissued) == len([r for r in report.written if r.action == "reissued"]):
            break
        time.sleep(0.5)
    first = next(e for e in reissued if e["payload"]["cluster"] == mesh_env.clusters[0].name)
    name = f"{mesh_env.clusters[0].name}-ca-cert"
    assert first["resource"]["prefect.resource.id"] == f"meshflow.certificate.e2e.{name}"
    roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in first["related"]}
    assert roles["cluster"] == f"meshflow.cluster.e2e.{mesh_env.clusters[0].name}"
    assert "flow-run" in roles  # Prefect relates it to the rotation run
    assert _events(prefect_server, "meshflow.rotation.completed", since)


def test_the_mount_check_waits_for_every_pod_to_show_the_new_versions(
    kube_clusters: list[kube.LocalCluster], mesh_env: MeshSpec
) -> None:
    cluster, spec = kube_clusters[0], mesh_env.clusters[0]
    api = _admin(cluster)
    base = (
        "/apis/secrets-store.csi.x-k8s.io/v1/namespaces/istio-system/secretproviderclasspodstatuses"
    )
    expected = {f"cert/{spec.name}-ca-cert": "v2", f"secret/{spec.name}-cert-chain": "c2"}

    def status(pod: str, version: str) -> dict[str, Any]:
        return {
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClassPodStatus",
            "metadata": {"name": f"{pod}-istio-system-istio-tls", "namespace": "istio-system"},
            "status": {
                "podName": pod, "secretProviderClassName": "istio-tls", "mounted": True,
                "targetPath": f"/var/lib/kubelet/pods/{pod}/volumes/cacerts",
                "objects": [{"id": f"cert/{spec.name}-ca-cert", "version": version},
                            {"id": f"secret/{spec.name}-cert-chain", "version": "c2"}],
            },
        }  # fmt: skip

    forget_credentials()
    assert mounted_versions(spec, "istio-system", expected, 0).status == "not run: no pods"
    request_json(api, "POST", base, body=status("istiod-a", "v2"))
    request_json(api, "POST", base, body=status("istiod-b", "v1"))
    try:
        stale = mounted_versions(spec, "istio-system", expected, 0.5)
        assert stale.status == "stale" and stale.pods == 2  # noqa: PT018
        assert "istiod-b: cert/" in stale.detail
        live = request_json(api, "GET", f"{base}/istiod-b-istio-system-istio-tls")
        updated = status("istiod-b", "v2")
        updated["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        request_json(api, "PUT", f"{base}/istiod-b-istio-system-istio-tls", body=updated)
        current = mounted_versions(spec, "istio-system", expected, 0.5)
        assert current.status == "current" and current.pods == 2  # noqa: PT018
    finally:
        for pod in ("istiod-a", "istiod-b"):
            request_json(api, "DELETE", f"{base}/{pod}-istio-system-istio-tls")
