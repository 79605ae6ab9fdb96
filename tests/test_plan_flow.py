"""plan_install (``meshflow install --dry-run``): what an install would write, and no write."""

from __future__ import annotations

import asyncio
import time

from kubernetes import client, config

from flows.install import MeshReport, install_mesh
from flows.plan import plan_install
from meshflow.plan import InstallPlan
from meshflow.spec import MeshSpec
from sandbox import kube
from sandbox.azure import AzureEmulator
from tasks.aks import forget_credentials
from tests.writes import WRITES


def _plan(spec: MeshSpec) -> InstallPlan:
    forget_credentials()
    return asyncio.run(plan_install(spec))


def _writes(emulator: AzureEmulator, clusters: list[kube.LocalCluster]) -> tuple[int, int]:
    vault = [
        r for r in emulator.requests_log()
        if r["method"] in WRITES and "/oauth2/" not in r["path"]
        and not r["path"].endswith(("/listClusterAdminCredential", "/listClusterUserCredential"))
    ]  # fmt: skip
    return len(vault), sum(len(kube.audit_writes(c, user="admin")) for c in clusters)


def test_a_converged_mesh_plans_nothing_and_a_plan_writes_nothing(
    installed_mesh: MeshReport, mesh_env: MeshSpec, azure_emulator: AzureEmulator,
    kube_clusters: list[kube.LocalCluster],
) -> None:  # fmt: skip
    before = _writes(azure_emulator, kube_clusters)
    plan = _plan(mesh_env)
    assert plan.changes == ()
    assert plan.lines()[1] == "  nothing to change"
    time.sleep(1.0)  # the audit log is written asynchronously
    assert _writes(azure_emulator, kube_clusters) == before


def test_the_plan_lists_what_is_missing_what_changed_and_what_would_be_deleted(
    installed_mesh: MeshReport, mesh_env: MeshSpec, azure_emulator: AzureEmulator,
    kube_clusters: list[kube.LocalCluster],
) -> None:  # fmt: skip
    alpha = kube_clusters[0]
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(alpha.admin_kubeconfig)))
    core.delete_namespaced_service_account("istio-reader-service-account", "istio-system")
    try:
        before = _writes(azure_emulator, kube_clusters)
        other_network = mesh_env.model_copy(update={"network": "network2"})
        plan = _plan(other_network)
        listed = {(c.target, c.object, c.change) for c in plan.changes}
        assert ("alpha", "ServiceAccount istio-system/istio-reader-service-account", "create") in (
            listed
        )
        assert ("alpha", "istioctl install (istiod-1-27-3)", "install") in listed
        assert ("bravo", "istioctl install (istiod-1-27-3)", "install") in listed
        alone = _plan(mesh_env.model_copy(update={"clusters": mesh_env.clusters[:1]}))
        assert ("alpha", "Secret istio-system/istio-remote-secret-bravo", "delete") in {
            (c.target, c.object, c.change) for c in alone.changes
        }
        time.sleep(1.0)
        assert _writes(azure_emulator, kube_clusters) == before
    finally:
        forget_credentials()
        assert asyncio.run(install_mesh(mesh_env)).ok  # puts the account back
