"""verify_mesh end to end: real control planes, the Azure emulator, a real Prefect server.

The session's mesh is installed once (``installed_mesh``); every test leaves it as it found it.
The sandbox has no kubelet, so istiod's sync is "not run: no nodes", never a pass.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter
from prefect.client.schemas.filters import TaskRunFilterFlowRunId as ByFlowRun
from prefect.states import State

from flows.install import MeshReport, install_mesh
from flows.runs import mesh_lock
from flows.verify import verify_mesh
from meshflow.health import MeshHealth
from meshflow.kubeconfig import parse_kubeconfig
from meshflow.manifests import READER_TOKEN_SECRET
from meshflow.spec import MeshSpec
from sandbox import kube
from sandbox.azure import AzureEmulator
from tasks.aks import forget_credentials

NS = "istio-system"
READS = ("listClusterAdminCredential", "listClusterUserCredential")
"""ARM actions that are POSTs and write nothing (they return the cluster's credentials)."""


def _admin(cluster: kube.LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))


def _verify(spec: MeshSpec) -> State[Any]:
    forget_credentials()
    state: State[Any] = asyncio.run(verify_mesh(spec, return_state=True))  # type: ignore[call-overload]
    return state


def _report(state: State[Any]) -> MeshHealth:
    report = state.result()
    assert isinstance(report, MeshHealth)
    return report


def _artifact(key: str) -> str:
    async def latest() -> str:
        async with get_client() as prefect:
            found = await prefect.read_latest_artifacts()
        return "\n".join(str(a.data) for a in found if a.key == key)

    return asyncio.run(latest())


def _task_runs(state: State[Any], expected: set[str]) -> set[str]:
    """The names of the run's task runs, once ``expected`` are among them (Prefect records task
    runs from their events, a moment after the run ended), or after 30 s."""
    run_id = state.state_details.flow_run_id
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as prefect:
        while True:
            runs = prefect.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=ByFlowRun(any_=[run_id]))
            )
            names = {r.name for r in runs}
            if expected <= names or time.monotonic() > deadline:
                return names
            time.sleep(0.5)


def _run_tags(state: State[Any]) -> list[str]:
    with get_client(sync_client=True) as prefect:
        (run,) = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    return list(run.tags)


def _versions(clusters: list[kube.LocalCluster]) -> dict[str, str]:
    """The resourceVersion of every object meshflow keeps in ``istio-system``, per cluster."""
    versions = {}
    for c in clusters:
        api = _admin(c)
        core = client.CoreV1Api(api)
        for kind, items in (
            ("secret", core.list_namespaced_secret(NS).items),
            ("configmap", core.list_namespaced_config_map(NS).items),
            ("serviceaccount", core.list_namespaced_service_account(NS).items),
            ("deployment", client.AppsV1Api(api).list_namespaced_deployment(NS).items),
        ):
            for item in items:
                versions[f"{c.name}/{kind}/{item.metadata.name}"] = item.metadata.resource_version
    return versions


@pytest.fixture(scope="module")
def installed(installed_mesh: MeshReport) -> MeshReport:
    assert installed_mesh.ok
    return installed_mesh


@pytest.fixture(scope="module")
def healthy(installed: MeshReport, mesh_env: MeshSpec) -> State[Any]:
    return _verify(mesh_env)


def test_a_healthy_mesh_completes_with_days_left_and_istiod_sync_not_run(
    healthy: State[Any], mesh_env: MeshSpec
) -> None:
    assert healthy.is_completed(), healthy.message
    report = _report(healthy)
    assert report.ok and report.problems == []  # noqa: PT018
    names = mesh_env.cluster_names
    rows = {(c.cluster, c.check): c for c in report.checks}
    for name in names:
        assert rows[(name, "credentials")].status == "passed"
        assert "namespaces listed" in rows[(name, "credentials")].detail
        sync = rows[(name, "istiod sync")]
        assert (sync.status, sync.detail.split(":")[0]) == ("not run", "no nodes")
        for other in names:
            if other != name:
                secret = rows[(name, f"remote secret of {other}")]
                assert secret.status == "passed", secret.detail
    certs = {c.object: c for c in report.certificates}
    assert set(certs) == {"istio-root-ca-key", "echoserver", *(f"{n}-ca-cert" for n in names)}
    for cert in certs.values():
        assert cert.status == "passed", cert.detail
        assert cert.days_left is not None and cert.days_left > 300  # noqa: PT018
        assert cert.version
    assert certs["istio-root-ca-key"].days_left > 3000  # type: ignore[operator]
    assert report.warnings == [
        f"not run: {n}: istiod sync: no nodes: no istiod can run on this cluster (sync not checked)"
        for n in names
    ]


def test_the_run_uses_install_s_checks_and_publishes_a_table(
    healthy: State[Any], mesh_env: MeshSpec
) -> None:
    expected = {
        f"{task}-{name}"
        for name in mesh_env.cluster_names
        for task in ("get-cluster-credentials", "list-namespaces", "check-remote-secrets-of",
                     "check-istiod-sync", "count-nodes")
    }  # fmt: skip
    tasks = _task_runs(healthy, expected)
    assert expected <= tasks, tasks
    assert any(t.startswith("read-certificate-expiry") for t in tasks)  # named with a suffix
    assert not any(t.startswith("probe-key-vault") for t in tasks)
    text = _artifact("mesh-health-e2e")
    assert "# Mesh health: e2e" in text
    assert "| alpha | istiod sync | not run | no nodes:" in text
    assert "| bravo | remote secret of alpha | passed |" in text
    assert "| echoserver | mesh |" in text
    assert not any(t.startswith("mesh:") for t in _run_tags(healthy))  # not one of the mesh's runs


def test_it_writes_nothing_and_runs_beside_a_holder_of_the_mesh_lock(
    installed: MeshReport,
    mesh_env: MeshSpec,
    emulator: AzureEmulator,
    kube_clusters: list[kube.LocalCluster],
) -> None:
    marks = [len(kube.audit_writes(c)) for c in kube_clusters]
    before = _versions(kube_clusters)

    async def beside_an_install() -> State[Any]:
        async with mesh_lock(mesh_env.environment):  # as a running install or rotation holds it
            run = verify_mesh(mesh_env, return_state=True)  # type: ignore[call-overload]
            state: State[Any] = await asyncio.wait_for(run, timeout=120)
            return state

    forget_credentials()
    state = asyncio.run(beside_an_install())
    assert state.is_completed(), state.message
    log = emulator.requests_log()
    assert any(r["path"].startswith("/certificates/") for r in log)  # it did read Key Vault
    writes = [
        f"{r['method']} {r['path']}" for r in log
        if r["method"] != "GET" and "/oauth2/" not in r["path"] and not r["path"].endswith(READS)
    ]  # fmt: skip
    assert writes == []
    time.sleep(1.0)  # the audit log is written asynchronously
    audited = [kube.audit_writes(c)[m:] for c, m in zip(kube_clusters, marks, strict=True)]
    assert audited == [[] for _ in kube_clusters]
    assert _versions(kube_clusters) == before


def _token_in(target: kube.LocalCluster, source: str) -> str:
    stored = client.CoreV1Api(_admin(target)).read_namespaced_secret(
        f"istio-remote-secret-{source}", NS
    )
    token = parse_kubeconfig(base64.b64decode(stored.data[source]).decode()).token
    assert token
    return token


def _rejected(cluster: kube.LocalCluster, token: str) -> bool:
    """Whether ``cluster`` answers ``token`` with 401 (its API server caches a token for 10 s)."""
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = cluster.api_url, str(cluster.ca_bundle)
    cfg.api_key, cfg.api_key_prefix = {"authorization": token}, {"authorization": "Bearer"}
    api = client.ApiClient(cfg)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                client.CoreV1Api(api).get_api_resources()
            except client.ApiException as exc:
                if exc.status == 401:
                    return True
            time.sleep(0.5)
        return False
    finally:
        api.close()


@pytest.fixture
def revoked_token(
    installed: MeshReport, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> Iterator[tuple[str, str]]:
    """alpha's reader token Secret deleted: its token in bravo's remote secret stops working.

    Afterwards an install creates the token Secret again and writes its token everywhere.
    """
    alpha, bravo = kube_clusters[0], kube_clusters[1]
    token = _token_in(bravo, alpha.name)
    client.CoreV1Api(_admin(alpha)).delete_namespaced_secret(READER_TOKEN_SECRET, NS)
    try:
        assert _rejected(alpha, token)
        yield alpha.name, bravo.name
    finally:
        forget_credentials()
        assert asyncio.run(install_mesh(mesh_env)).ok
        assert _token_in(bravo, alpha.name) != token


def test_a_revoked_remote_secret_token_fails_the_run_naming_the_pair(
    revoked_token: tuple[str, str], mesh_env: MeshSpec
) -> None:
    source, target = revoked_token
    state = _verify(mesh_env)
    assert state.is_failed()
    message = str(state.message)
    assert "mesh e2e: 1 health problem (artifact mesh-health-e2e)" in message
    lines = [line for line in message.splitlines() if line.startswith(f"{target}: ")]
    assert len(lines) == 1, message
    assert lines[0].startswith(
        f"{target}: remote secret of {source}: its kubeconfig does not reach"
    )
    assert "rotate-reader-tokens" in lines[0]
    text = _artifact("mesh-health-e2e")
    assert f"| {target} | remote secret of {source} | **failed** |" in text
    assert f"| {source} | remote secret of {target} | passed |" in text  # the other way works
    assert "**1 problems** (the run failed)" in text


def test_a_certificate_within_the_threshold_is_flagged_and_the_run_completes(
    installed: MeshReport, mesh_env: MeshSpec
) -> None:
    pki = mesh_env.pki.model_dump() | {"rotation_threshold_days": 400}
    spec = MeshSpec.model_validate(mesh_env.model_dump() | {"pki": pki})
    state = _verify(spec)
    assert state.is_completed(), state.message
    report = _report(state)
    certs = {c.object: c for c in report.certificates}
    leaf = certs["echoserver"]  # 365 days of validity: within 400
    assert leaf.status == "warning"
    assert leaf.days_left is not None and leaf.days_left <= 365  # noqa: PT018
    assert "within the rotation threshold (400 days)" in leaf.detail
    for name in mesh_env.cluster_names:  # 730 days: not within 400
        assert certs[f"{name}-ca-cert"].status == "passed"
    assert certs["istio-root-ca-key"].status == "passed"
    assert any(w.startswith("warning: echoserver (mesh): expires on") for w in report.warnings)
    assert "| echoserver | mesh |" in _artifact("mesh-health-e2e")
