"""install_mesh end to end on real control planes, the Azure emulator and a real Prefect server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from kubernetes import client, config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterTags,
)

import tasks.kube
from blocks import KeyVault, load_block
from flows.install import MeshReport, install_cluster, install_mesh
from meshflow import pki
from meshflow.kubeconfig import parse_kubeconfig
from meshflow.spec import MeshSpec, PkiSettings
from sandbox import environment as env
from sandbox import kube, processes
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer
from tasks.aks import forget_credentials
from tasks.keyvault import public_cert
from tasks.kube import check_from
from tasks.kube_client import api_client_for, request_json
from tasks.pki import ROOT_CERT_OBJECT, ROOT_KEY

REPO = Path(__file__).resolve().parent.parent


def _core(cluster: kube.LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(
        config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    )


def _exists(api: client.ApiClient, path: str) -> bool:
    return request_json(api, "GET", path) is not None


def _admin(cluster: kube.LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))


def _writes(clusters: list[kube.LocalCluster]) -> int:
    return sum(len(kube.audit_writes(c, user="admin")) for c in clusters)


def _admin_wrote_since(clusters: list[kube.LocalCluster], marks: list[int]) -> bool:
    """Whether the audit logs got an admin write after byte offsets ``marks`` (cheap to poll:
    only the new part is read, where :func:`_writes` parses each whole log)."""
    for cluster, mark in zip(clusters, marks, strict=True):
        with cluster.audit_log.open("rb") as log:
            log.seek(mark)
            if b'"username":"admin"' in log.read():
                return True
    return False


def _run(spec: MeshSpec) -> MeshReport:
    forget_credentials()
    return asyncio.run(install_mesh(spec))


@pytest.fixture(scope="module")
def first_run(mesh_env: MeshSpec, azure_emulator: AzureEmulator) -> MeshReport:
    """An install that issues every cluster's intermediate CA (another module may have
    installed this session's mesh before: its intermediates are dropped from the vault)."""
    for c in mesh_env.clusters:
        for name in (f"{c.name}-ca-cert", f"{c.name}-cert-chain"):
            azure_emulator.drop_certificate(name)
            azure_emulator.drop_secret(name)
    return _run(mesh_env)


def test_install_creates_every_documented_object(
    first_run: MeshReport, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    rev = mesh_env.istio_revision
    for cluster, spec in zip(kube_clusters, mesh_env.clusters, strict=True):
        api = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
        paths = [
            "/api/v1/namespaces/istio-system",
            "/api/v1/namespaces/echoserver",
            "/apis/secrets-store.csi.x-k8s.io/v1/namespaces/istio-system/secretproviderclasses/istio-tls",
            f"/apis/apps/v1/namespaces/istio-system/deployments/istiod-{rev}",
            "/api/v1/namespaces/istio-system/serviceaccounts/istio-reader-service-account",
            f"/apis/rbac.authorization.k8s.io/v1/clusterroles/istio-reader-clusterrole-{rev}-istio-system",
            f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/istio-reader-clusterrole-{rev}-istio-system",
            "/api/v1/namespaces/istio-system/secrets/istio-reader-service-account-istio-remote-secret-token",
            "/api/v1/namespaces/echoserver/services/echoserver",
        ]  # fmt: skip
        for path in paths:
            assert _exists(api, path), f"{cluster.name}: {path}"
        deployment = "/apis/apps/v1/namespaces/echoserver/deployments/echoserver"
        assert _exists(api, deployment) is spec.sample_workload
        ingress_ns = _core(cluster).read_namespace("istio-ingress")
        assert ingress_ns.metadata.labels["istio.io/rev"] == rev
        others = [c.name for c in kube_clusters if c.name != cluster.name]
        secrets = _core(cluster).list_namespaced_secret(
            "istio-system", label_selector="istio/multiCluster=true"
        )
        assert sorted(s.metadata.name for s in secrets.items) == [
            f"istio-remote-secret-{o}" for o in sorted(others)
        ]


def test_remote_secrets_give_reader_rights_and_nothing_more(
    first_run: MeshReport, kube_clusters: list[kube.LocalCluster]
) -> None:
    assert first_run.ok
    assert len(first_run.access) == 2 and all(a.read_ok for a in first_run.access)  # noqa: PT018
    alpha, bravo = kube_clusters
    stored = _core(bravo).read_namespaced_secret("istio-remote-secret-alpha", "istio-system")
    assert stored.metadata.annotations["networking.istio.io/cluster"] == "alpha"
    access = parse_kubeconfig(base64.b64decode(stored.data["alpha"]))
    assert access.server == alpha.api_url
    reader = client.CoreV1Api(api_client_for(access))
    pods = reader.list_namespaced_pod("istio-system").items  # read: allowed
    assert all(p.status.phase == "Pending" for p in pods)  # no kubelet: nothing runs
    with pytest.raises(client.ApiException) as denied:
        reader.create_namespaced_config_map("default", {"metadata": {"name": "reader-write"}})
    assert denied.value.status == 403


def test_a_reader_that_lost_its_rights_is_reported_and_repaired(
    first_run: MeshReport, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    alpha, bravo = kube_clusters
    rbac = client.RbacAuthorizationV1Api(
        config.new_client_from_config(config_file=str(alpha.admin_kubeconfig))
    )
    binding = f"istio-reader-clusterrole-{mesh_env.istio_revision}-istio-system"
    rbac.delete_cluster_role_binding(binding)
    forget_credentials()
    (denied,) = check_from(mesh_env.cluster(alpha.name), [mesh_env.cluster(bravo.name)])
    assert denied.reachable
    assert not denied.read_ok
    assert len(denied.missing) == 14  # list and watch on each of the 7 resources istiod reads
    assert {"list core/pods", "watch discovery.k8s.io/endpointslices"} <= set(denied.missing)
    report = _run(mesh_env)  # restores the binding
    assert report.ok
    assert rbac.read_cluster_role_binding(binding).role_ref.name == binding


def test_data_plane_checks_say_not_run_without_nodes(first_run: MeshReport) -> None:
    assert {d.check for d in first_run.data_plane} == {"istiod sync", "cross-cluster call"}
    assert all(d.status == "not run" for d in first_run.data_plane)
    assert all("no" in d.detail for d in first_run.data_plane)
    assert "not run" in first_run.markdown()


def test_second_run_writes_nothing(
    first_run: MeshReport,
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
    emulator: AzureEmulator,
) -> None:
    before = _writes(kube_clusters)
    again = _run(mesh_env)
    time.sleep(1.0)  # the audit log is written asynchronously
    assert again.writes == 0
    assert _writes(kube_clusters) == before
    vault_writes = [
        r for r in emulator.requests_log()
        if r["method"] in {"PUT", "POST", "PATCH", "DELETE"}
        and not r["path"].startswith("/subscriptions") and "/oauth2/" not in r["path"]
    ]  # fmt: skip
    assert vault_writes == []


def test_pki_is_reported_once_per_object_and_each_cluster_owns_its_ca(
    first_run: MeshReport, mesh_env: MeshSpec
) -> None:
    names = [o.name for o in first_run.pki.objects]
    assert len(names) == len(set(names))
    assert {"istio-root-ca-key", "root-cert", "echoserver", "frontend-certificate"} <= set(names)
    for c in first_run.clusters:
        assert {o.name for o in c.ca} == {f"{c.cluster}-ca-cert", f"{c.cluster}-cert-chain"}
        assert all(o.written for o in c.ca)  # the first run issued them
    assert first_run.writes == sum(o.written for o in first_run.pki.objects) + sum(
        a.written for c in first_run.clusters for a in c.applied
    ) + sum(c.istio.action != "unchanged" for c in first_run.clusters) + sum(
        r.written for r in first_run.remote_secrets
    ) + sum(i.writes for i in first_run.ingress)
    (exposed,) = first_run.ingress  # the sandbox's first cluster is behind an App Gateway
    assert exposed.ok  # what its first run writes: tests/test_ingress_flow.py


def test_install_cluster_runs_on_its_own_as_a_deployment_would(
    first_run: MeshReport, mesh_env: MeshSpec
) -> None:
    forget_credentials()
    alone = asyncio.run(install_cluster(mesh_env, mesh_env.clusters[1].name))
    assert alone.writes == 0  # converged: its CA, namespaces and Istio are read, not rewritten
    assert {o.name for o in alone.ca} == {
        f"{alone.cluster}-ca-cert",
        f"{alone.cluster}-cert-chain",
    }


def test_a_killed_run_converges_on_the_next_one(
    first_run: MeshReport,
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    # Remove some of what the first run made, start a run in another process and kill it as
    # soon as it starts writing; then a normal run must restore the same end state.
    alpha, bravo = kube_clusters
    _core(bravo).delete_namespaced_secret("istio-remote-secret-alpha", "istio-system")
    _core(alpha).delete_namespace("echoserver")
    # Until the namespace is gone, the child's early writes into it would be refused, and its
    # first write could come as late as the exchange: wait, so that it is killed early.
    deadline = time.monotonic() + 60
    while _exists(_admin(alpha), "/api/v1/namespaces/echoserver") and time.monotonic() < deadline:
        time.sleep(0.2)
    spec_file = tmp_path / "mesh.json"
    spec_file.write_text(mesh_env.model_dump_json())
    before = _writes(kube_clusters)
    marks = [c.audit_log.stat().st_size for c in kube_clusters]
    child = _install_in_child(spec_file, prefect_server)
    deadline = time.monotonic() + 60
    while (
        not _admin_wrote_since(kube_clusters, marks)
        and child.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    # Killed mid-write: it had begun writing to the clusters, and not finished.
    assert _writes(kube_clusters) != before
    assert not _exists(
        _admin(bravo), "/api/v1/namespaces/istio-system/secrets/istio-remote-secret-alpha"
    )
    report = _run(mesh_env)
    assert report.ok
    # The killed run does not stay "Running": the next run of its mesh marked it (and the
    # sub-flows it had started) Crashed, since its process on this host is gone.
    with get_client(sync_client=True) as prefect:
        killed = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"pid:{child.pid}"]))
        )
    assert [r.state_type.value for r in killed if r.parent_task_run_id is None] == ["CRASHED"]
    assert "is gone" in str(killed[0].state.message if killed[0].state else "")
    secret = _core(bravo).read_namespaced_secret("istio-remote-secret-alpha", "istio-system")
    assert secret.metadata.labels["istio/multiCluster"] == "true"
    assert (
        _core(alpha).read_namespaced_service("echoserver", "echoserver").spec.ports[0].port == 8080
    )
    assert _run(mesh_env).writes == 0  # and it is converged: nothing left to do


def _install_in_child(
    spec_file: Path, server: PrefectServer, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """``install_mesh`` of the spec in ``spec_file``, in a process of its own."""
    out = log.open("wb") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-c",
         "import asyncio, sys; from flows.install import install_mesh; "
         "from meshflow.spec import MeshSpec; "
         "asyncio.run(install_mesh(MeshSpec.model_validate_json(open(sys.argv[1]).read())))",
         str(spec_file)],
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PREFECT_API_URL": server.api_url,
             "PREFECT_HOME": str(server.database.parent)},
    )  # fmt: skip


@pytest.mark.parametrize("round_", range(5))
def test_two_installs_started_together_on_a_fresh_vault_make_one_root(
    round_: int,
    first_run: MeshReport,
    mesh_env: MeshSpec,
    azure_emulator: AzureEmulator,
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    # Two `meshflow install` at the same moment: one takes the mesh lock, the other waits for
    # it and finds everything done. Key Vault ends with one root, and root-cert, every chain
    # and every intermediate agree on it.
    vault = load_block(KeyVault, mesh_env.key_vault_block)
    azure_emulator.drop_key(ROOT_KEY)
    for name in (
        ROOT_CERT_OBJECT,
        "root-cert",
        "echoserver",
        "frontend-certificate",
        *(f"{c.name}-{k}" for c in mesh_env.clusters for k in ("ca-cert", "cert-chain")),
    ):
        azure_emulator.drop_certificate(name)
        azure_emulator.drop_secret(name)  # fmt: skip
    spec_file = tmp_path / "mesh.json"
    spec_file.write_text(mesh_env.model_dump_json())
    children = [_install_in_child(spec_file, prefect_server, tmp_path / f"{i}.log") for i in (1, 2)]
    for i, child in enumerate(children, 1):
        assert child.wait(timeout=600) == 0, (tmp_path / f"{i}.log").read_text()[-3000:]
    versions = [p for p in vault.key_client().list_properties_of_key_versions(ROOT_KEY)]
    assert [v.enabled for v in versions] == [True]  # one root: the waiting run made none
    root = pki.load_pem_chain((vault.secret_client().get_secret("root-cert").value or "").encode())
    assert len(root) == 1
    for c in mesh_env.clusters:
        ca = public_cert(vault.certificate_client().get_certificate(f"{c.name}-ca-cert"))
        chain = vault.secret_client().get_secret(f"{c.name}-cert-chain").value or ""
        assert pki.load_pem_chain(chain.encode()) == [ca, root[0]]
        assert pki.signed_by(ca, root[0])


@pytest.fixture(scope="module")
def four_planes(
    tmp_path_factory: pytest.TempPathFactory,
    azure_emulator: AzureEmulator,
    prefect_server: PrefectServer,
    istioctl_standin: Path,
) -> Iterator[tuple[MeshSpec, list[kube.LocalCluster]]]:
    root = tmp_path_factory.mktemp("four")
    names = ["one", "two", "three", "four"]
    clusters = kube.start_clusters(names, root)
    try:
        spec = env.wire_environment(
            azure_emulator, clusters, environment="four", pki=PkiSettings(ca_key_size=2048)
        )
        yield spec, clusters
    finally:
        for c in clusters:
            c.stop()
        processes.stop(processes.running_under(str(root)))


@pytest.fixture(scope="module")
def four_clusters(four_planes: tuple[MeshSpec, list[kube.LocalCluster]]) -> MeshSpec:
    return four_planes[0]


def test_four_clusters_install_and_join_every_pair(four_clusters: MeshSpec) -> None:
    report = _run(four_clusters)
    assert report.ok
    assert len(report.clusters) == 4
    assert len(report.remote_secrets) == 12  # N x (N - 1)
    assert sorted((a.source, a.target) for a in report.access if a.read_ok) == sorted(
        (s, t) for s in ("one", "two", "three", "four") for t in ("one", "two", "three", "four")
        if s != t
    )  # fmt: skip
    assert json.loads(report.model_dump_json())["environment"] == "four"
    assert _run(four_clusters).writes == 0


def _task_run_names(flow_run_id: UUID, prefixes: tuple[str, ...], expected: int) -> list[str]:
    """Names of the flow run's task runs with ``prefixes``, once ``expected`` are recorded
    (task-run states reach the server as events, after the flow ends)."""
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as prefect:
        while True:
            runs = prefect.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
            )
            names = sorted(t.name for t in runs if t.name.startswith(prefixes))
            if len(names) >= expected or time.monotonic() > deadline:
                return names
            time.sleep(0.5)


def test_the_join_is_one_exchange_and_one_check_per_source(
    four_clusters: MeshSpec,
) -> None:
    # N + N task runs in the Prefect UI, not 2 x N x (N - 1) (24 for four clusters).
    forget_credentials()
    state = asyncio.run(install_mesh(four_clusters, return_state=True))  # type: ignore[call-overload]
    assert state.is_completed()
    names = ("one", "two", "three", "four")
    run_id = state.state_details.flow_run_id
    recorded = _task_run_names(run_id, ("exchange-remote", "check-remote"), 8)
    assert recorded == sorted(
        [f"exchange-remote-secrets-from-{n}" for n in names]
        + [f"check-remote-secrets-of-{n}" for n in names]
    )


def test_identical_copies_of_a_remote_secret_are_reviewed_once(
    four_planes: tuple[MeshSpec, list[kube.LocalCluster]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, clusters = four_planes
    _run(spec)  # converged: "one"'s secret is in two, three and four
    reviews: list[str] = []
    real = tasks.kube._access_review

    def counted(api: client.ApiClient, verb: str, group: str, resource: str) -> bool:
        reviews.append(api.configuration.host)
        return real(api, verb, group, resource)

    monkeypatch.setattr(tasks.kube, "_access_review", counted)
    targets = [c for c in spec.clusters if c.name != "one"]
    access = check_from(spec.cluster("one"), targets)
    assert [a.target for a in access] == ["two", "three", "four"]
    assert all(a.read_ok for a in access)
    assert reviews == [clusters[0].api_url] * 14  # one kubeconfig, reviewed once

    # A copy that differs (here: a blank line more, as a hand edit would leave) is its own check.
    three = _core(clusters[2])
    stored = three.read_namespaced_secret("istio-remote-secret-one", "istio-system")
    edited = base64.b64decode(stored.data["one"]).decode() + "\n"
    three.patch_namespaced_secret(
        "istio-remote-secret-one", "istio-system", {"stringData": {"one": edited}}
    )
    reviews.clear()
    forget_credentials()
    assert all(a.read_ok for a in check_from(spec.cluster("one"), targets))
    assert len(reviews) == 28
    _run(spec)  # the exchange writes the one kubeconfig back


def test_a_failing_cluster_costs_the_others_nothing(
    four_planes: tuple[MeshSpec, list[kube.LocalCluster]], azure_emulator: AzureEmulator
) -> None:
    # After the four-cluster install: remove the remote secrets among one, two and three, then
    # make ARM refuse cluster four's credentials (403: permanent, failed at once).
    spec, clusters = four_planes
    planes = {c.name: _core(c) for c in clusters}
    healthy = ["one", "two", "three"]
    for s in healthy:
        for t in healthy:
            if s != t:
                planes[t].delete_namespaced_secret(f"istio-remote-secret-{s}", "istio-system")
    azure_emulator.add_fault(
        r".*/managedClusters/four/listClusterAdminCredential$", method="POST", status=403,
        times=1000,
    )  # fmt: skip
    try:
        forget_credentials()
        state = asyncio.run(install_mesh(spec, return_state=True))  # type: ignore[call-overload]
    finally:
        azure_emulator.clear_faults()
    assert state.is_failed()
    assert "four" in str(state.message)
    # The other clusters finished, and every pair not involving four was joined.
    for s in healthy:
        for t in healthy:
            if s != t:
                secret = planes[t].read_namespaced_secret(
                    f"istio-remote-secret-{s}", "istio-system"
                )
                assert secret.metadata.labels["istio/multiCluster"] == "true"
    with get_client(sync_client=True) as prefect:
        subflows = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[state.state_details.flow_run_id]
                )
            )
        )
    assert {f.name: f.state_type.value for f in subflows} == {
        "install-cluster-one": "COMPLETED",
        "install-cluster-two": "COMPLETED",
        "install-cluster-three": "COMPLETED",
        "install-cluster-four": "FAILED",
        "expose-cluster-one": "COMPLETED",  # the ingress of the clusters that installed
    }
    assert _run(spec).ok  # and once the cause is gone, the next run converges


def test_bad_input_fails_before_anything_changes(
    mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    before = _writes(kube_clusters)
    bad: dict[str, Any] = json.loads(mesh_env.model_dump_json())
    bad["clusters"][1]["name"] = bad["clusters"][0]["name"]
    with pytest.raises(Exception, match="repeated"):
        asyncio.run(install_mesh(bad))  # type: ignore[arg-type]
    assert _writes(kube_clusters) == before
