"""rotate_reader_tokens end to end: real control planes (their token controllers, API servers
and audit logs), the Azure emulator and a real Prefect server.

The mesh is installed first; every test leaves it converged (the reader's binding present, no
interim token Secret, every remote secret holding its source's current token), since other
modules share the session's mesh.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.logging.handlers import APILogHandler

import tasks.kube
from flows.install import MeshReport, install_mesh
from flows.reader_tokens import ReaderTokenReport, SourceRotation, rotate_reader_tokens
from meshflow.errors import MeshflowError
from meshflow.kubeconfig import parse_kubeconfig
from meshflow.manifests import reader_cluster_role_binding, reader_cluster_role_name
from meshflow.manifests.multicluster import (
    READER_INTERIM_TOKEN_SECRET as INTERIM,
)
from meshflow.manifests.multicluster import (
    READER_TOKEN_SECRET as STABLE,
)
from meshflow.manifests.multicluster import (
    ReaderTokenSecret,
    reader_token_generation,
    rotated_reader_token_secret,
)
from meshflow.spec import MeshSpec
from sandbox import kube
from sandbox.prefect_server import PrefectServer
from tasks.aks import forget_credentials
from tasks.kube import KubeError, exchange_token, reader_token_secrets, retire_token
from tests.secret_scan import scan

NS = "istio-system"
SEEN: set[str] = set()
"""Every reader token this module saw: none may be in what Prefect stored."""


def _admin(cluster: kube.LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))


def _secret(cluster: kube.LocalCluster, name: str) -> Any:
    try:
        return client.CoreV1Api(_admin(cluster)).read_namespaced_secret(name, NS)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _token(cluster: kube.LocalCluster, name: str = STABLE) -> str | None:
    """The token in a reader token Secret of ``cluster`` (waiting for the token controller)."""
    deadline = time.monotonic() + 15
    while (secret := _secret(cluster, name)) is not None:
        if (secret.data or {}).get("token"):
            token = base64.b64decode(secret.data["token"]).decode()
            SEEN.add(token)
            return token
        assert time.monotonic() < deadline, f"{cluster.name}: {name} never filled"
        time.sleep(0.05)
    return None


def _generation(cluster: kube.LocalCluster) -> int:
    secret = _secret(cluster, STABLE)
    return reader_token_generation({"metadata": {"labels": secret.metadata.labels}})


def _stored(target: kube.LocalCluster, source: kube.LocalCluster) -> str:
    """The token in ``source``'s remote secret in ``target``."""
    secret = _secret(target, f"istio-remote-secret-{source.name}")
    token = parse_kubeconfig(base64.b64decode(secret.data[source.name])).token
    assert token is not None
    SEEN.add(token)
    return token


def _status_with(cluster: kube.LocalCluster, token: str) -> int:
    """What ``cluster``'s API server answers a discovery request made with ``token``."""
    cfg = client.Configuration()
    cfg.host, cfg.ssl_ca_cert = cluster.api_url, str(cluster.ca_bundle)
    cfg.api_key, cfg.api_key_prefix = {"authorization": token}, {"authorization": "Bearer"}
    api = client.ApiClient(cfg)
    try:
        client.CoreV1Api(api).get_api_resources()
        return 200
    except client.ApiException as exc:
        return int(exc.status)
    finally:
        api.close()


def _eventually_rejected(cluster: kube.LocalCluster, token: str) -> bool:
    """Whether the API server answers ``token`` with 401 within 30 s: it caches a token it
    accepted for 10 s, and then finds its Secret deleted (or holding another token)."""
    deadline = time.monotonic() + 30
    while _status_with(cluster, token) != 401:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _others(clusters: list[kube.LocalCluster], c: kube.LocalCluster) -> list[kube.LocalCluster]:
    return [o for o in clusters if o.name != c.name]


def _rotate(spec: MeshSpec) -> ReaderTokenReport:
    forget_credentials()
    return asyncio.run(rotate_reader_tokens(spec))


def _install(spec: MeshSpec) -> MeshReport:
    forget_credentials()
    return asyncio.run(install_mesh(spec))


def _rows(report: ReaderTokenReport) -> dict[str, SourceRotation]:
    return {s.source: s for s in report.sources}


def _audit_count(clusters: list[kube.LocalCluster]) -> list[int]:
    return [len(kube.audit_writes(c, user="admin")) for c in clusters]


def _audited_since(
    clusters: list[kube.LocalCluster], marks: list[int], at_least: int
) -> dict[str, list[dict[str, Any]]]:
    """Each cluster's successful admin writes after ``marks``, once it has ``at_least`` (the
    API server writes its audit log asynchronously)."""
    deadline = time.monotonic() + 10
    while True:
        events = {
            c.name: [e for e in kube.audit_writes(c, user="admin")[mark:]
                     if e["responseStatus"]["code"] < 300]
            for c, mark in zip(clusters, marks, strict=True)
        }  # fmt: skip
        if all(len(e) >= at_least for e in events.values()) or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def _named(events: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [e for e in events if e["objectRef"].get("name") in names]


def _restore(spec: MeshSpec, clusters: list[kube.LocalCluster]) -> None:
    """Leave the mesh converged: the reader's binding, istioctl's token Secret, no interim."""
    binding = reader_cluster_role_binding(spec.istio_revision)
    for c in clusters:
        try:
            client.RbacAuthorizationV1Api(_admin(c)).create_cluster_role_binding(binding)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    if any(_secret(c, STABLE) is None for c in clusters):
        assert _install(spec).ok
    if any(_secret(c, INTERIM) is not None for c in clusters):
        assert _rotate(spec).ok


@pytest.fixture(scope="module")
def installed(
    installed_mesh: MeshReport, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> Iterator[MeshReport]:
    assert installed_mesh.ok
    yield installed_mesh
    _restore(mesh_env, kube_clusters)


@pytest.fixture
def converged(
    installed: MeshReport, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> Iterator[None]:
    """Each test starts from, and leaves, a converged mesh."""
    yield
    _restore(mesh_env, kube_clusters)


class Rotated:
    """The module's first rotation, with what the clusters held before it and what it wrote."""

    def __init__(self, spec: MeshSpec, clusters: list[kube.LocalCluster]) -> None:
        self.old = {c.name: _token(c) for c in clusters}
        self.generation = {c.name: _generation(c) for c in clusters}
        marks = _audit_count(clusters)
        self.report = _rotate(spec)
        # Per cluster: 2 token Secrets created and 2 deleted, 2 updates of the other's secret.
        self.audit = _audited_since(clusters, marks, at_least=6)


@pytest.fixture(scope="module")
def rotated(
    installed: MeshReport, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> Rotated:
    return Rotated(mesh_env, kube_clusters)


def test_every_remote_secret_holds_the_new_token(
    rotated: Rotated, kube_clusters: list[kube.LocalCluster]
) -> None:
    report = rotated.report
    assert report.ok, report.markdown()
    rows = _rows(report)
    for source in kube_clusters:
        new = _token(source)
        assert new is not None
        assert new != rotated.old[source.name]
        assert _secret(source, INTERIM) is None
        for target in _others(kube_clusters, source):
            assert _stored(target, source) == new
        g = rotated.generation[source.name]
        row = rows[source.name]
        assert row.status == "rotated"
        assert row.old_secret == ReaderTokenSecret(STABLE, g)
        assert row.new_secret == ReaderTokenSecret(STABLE, g + 2) == (STABLE, _generation(source))
        assert row.deleted == (ReaderTokenSecret(STABLE, g), ReaderTokenSecret(INTERIM, g + 1))
        assert row.targets_updated == tuple(o.name for o in _others(kube_clusters, source))
        assert row.checks and all(c.read_ok for c in row.checks)  # noqa: PT018
        # Each: 2 token Secrets created, 2 deleted, the remote secret written twice.
        assert row.writes == 4 + 2 * len(row.targets_updated)
    assert report.writes == sum(r.writes for r in rows.values())
    assert report.lines()[-1] == f"  {report.writes} writes"


def test_the_old_token_is_rejected_by_its_api_server(
    rotated: Rotated, kube_clusters: list[kube.LocalCluster]
) -> None:
    for source in kube_clusters:
        new = _token(source)
        assert new is not None
        assert _status_with(source, new) == 200
        old = rotated.old[source.name]
        assert old is not None
        assert _eventually_rejected(source, old), f"{source.name} still accepts the old token"


def _done(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["stageTimestamp"])


def _received(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["requestReceivedTimestamp"])


def test_no_remote_secret_ever_held_a_deleted_token(
    rotated: Rotated, kube_clusters: list[kube.LocalCluster]
) -> None:
    """The order of writes, from the API servers' audit logs (one clock: the same machine)."""
    for source in kube_clusters:
        tokens = _named(rotated.audit[source.name], STABLE, INTERIM)
        assert [(e["verb"], e["objectRef"]["name"]) for e in tokens] == [
            ("create", INTERIM), ("delete", STABLE), ("create", STABLE), ("delete", INTERIM),
        ]  # fmt: skip
        interim_made, stable_gone, stable_made, interim_gone = tokens
        assert _done(stable_gone) <= _received(stable_made)
        for target in _others(kube_clusters, source):
            to_interim, to_stable = _named(
                rotated.audit[target.name], f"istio-remote-secret-{source.name}"
            )
            assert to_interim["verb"] == to_stable["verb"] == "patch"
            # Each remote secret gets a token after its Secret exists, and before the token
            # it held is deleted.
            assert _done(interim_made) <= _received(to_interim)
            assert _done(to_interim) <= _received(stable_gone)
            assert _done(stable_made) <= _received(to_stable)
            assert _done(to_stable) <= _received(interim_gone)


def test_an_install_after_a_rotation_writes_nothing_and_keeps_the_new_token(
    rotated: Rotated, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    tokens = {c.name: _token(c) for c in kube_clusters}
    marks = _audit_count(kube_clusters)
    again = _install(mesh_env)
    assert again.ok
    assert again.writes == 0
    time.sleep(1.0)  # the audit log is written asynchronously
    assert _audit_count(kube_clusters) == marks
    for source in kube_clusters:
        assert _token(source) == tokens[source.name]
        for target in _others(kube_clusters, source):
            assert _stored(target, source) == tokens[source.name]


def test_a_second_rotation_rotates_again(
    rotated: Rotated, converged: None, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    before = {c.name: _token(c) for c in kube_clusters}
    generation = {c.name: _generation(c) for c in kube_clusters}
    report = _rotate(mesh_env)
    assert {s.status for s in report.sources} == {"rotated"}
    for source in kube_clusters:
        new = _token(source)
        assert new not in (before[source.name], rotated.old[source.name])
        assert _generation(source) == generation[source.name] + 2
        for target in _others(kube_clusters, source):
            assert _stored(target, source) == new
    alpha = kube_clusters[0]
    old = before[alpha.name]
    assert old is not None
    assert _eventually_rejected(alpha, old)


def test_a_failed_check_keeps_the_old_token_and_the_next_run_finishes_the_rotation(
    rotated: Rotated, converged: None, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    alpha, bravo = kube_clusters
    old, old_uid = _token(alpha), _secret(alpha, STABLE).metadata.uid
    generation = _generation(alpha)
    rbac = client.RbacAuthorizationV1Api(_admin(alpha))
    rbac.delete_cluster_role_binding(reader_cluster_role_name(mesh_env.istio_revision))
    try:
        with pytest.raises(MeshflowError, match="alpha: stopped: check failed") as stopped:
            _rotate(mesh_env)
    finally:
        rbac.create_cluster_role_binding(reader_cluster_role_binding(mesh_env.istio_revision))
    message = str(stopped.value)
    assert "bravo: the reader may not list core/pods" in message
    assert f"kept {STABLE} (generation {generation})" in message
    # alpha: its old token Secret kept; bravo's remote secret holds the interim token.
    assert _secret(alpha, STABLE).metadata.uid == old_uid
    assert _token(alpha) == old
    interim = _token(alpha, INTERIM)
    assert interim is not None
    assert _stored(bravo, alpha) == interim
    assert not any(t in message for t in (old, interim))
    # bravo's own rotation finished beside it.
    assert _secret(bravo, INTERIM) is None
    assert _stored(alpha, bravo) == _token(bravo)

    marks = _audit_count(kube_clusters)
    report = _rotate(mesh_env)
    rows = _rows(report)
    assert rows["alpha"].status == "resumed"
    assert rows["bravo"].status == "rotated"
    assert rows["alpha"].deleted == (
        ReaderTokenSecret(STABLE, generation),
        ReaderTokenSecret(INTERIM, generation + 1),
    )
    audit = _audited_since(kube_clusters, marks, at_least=3)
    made = [e for e in _named(audit["alpha"], INTERIM) if e["verb"] == "create"]
    assert made == []  # the interim Secret the stopped run made was reused
    current = _token(alpha)
    assert current not in (old, interim)
    assert _stored(bravo, alpha) == current
    assert _secret(alpha, INTERIM) is None
    assert old is not None
    assert _eventually_rejected(alpha, old)
    assert _eventually_rejected(alpha, interim)


def test_a_rotation_stopped_in_its_second_step_is_finished_without_another_token(
    rotated: Rotated, converged: None, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    # As a run leaves alpha that stopped after istioctl's name got its new token and every
    # remote secret had it: the interim Secret (older) is still there.
    alpha, bravo = kube_clusters
    generation = _generation(alpha)
    current, uid = _token(alpha), _secret(alpha, STABLE).metadata.uid
    interim = rotated_reader_token_secret(ReaderTokenSecret(INTERIM, generation - 1))
    client.CoreV1Api(_admin(alpha)).create_namespaced_secret(NS, interim)
    assert _token(alpha, INTERIM) is not None
    row = _rows(_rotate(mesh_env))["alpha"]
    assert row.status == "resumed"
    assert row.old_secret == ReaderTokenSecret(INTERIM, generation - 1)
    assert row.new_secret == ReaderTokenSecret(STABLE, generation)
    assert row.deleted == (ReaderTokenSecret(INTERIM, generation - 1),)
    assert row.targets_updated == ()  # bravo's copy already held alpha's current token
    assert _secret(alpha, STABLE).metadata.uid == uid
    assert _token(alpha) == current
    assert _stored(bravo, alpha) == current
    assert _secret(alpha, INTERIM) is None


def test_the_delete_refuses_while_a_remote_secret_holds_the_token(
    rotated: Rotated, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    forget_credentials()
    alpha, bravo = mesh_env.clusters
    generation = _generation(kube_clusters[0])
    uid = _secret(kube_clusters[0], STABLE).metadata.uid
    held = ReaderTokenSecret(STABLE, generation)
    with pytest.raises(KubeError, match="istio-remote-secret-alpha in bravo still holds its token"):
        retire_token(alpha, [bravo], held)
    with pytest.raises(KubeError, match=f"it is of generation {generation}, not 99"):
        retire_token(alpha, [bravo], ReaderTokenSecret(STABLE, 99))
    assert _secret(kube_clusters[0], STABLE).metadata.uid == uid
    gone = retire_token(alpha, [bravo], ReaderTokenSecret(INTERIM, generation + 1))
    assert gone.action == "unchanged"


def test_the_exchange_writes_only_the_generation_it_was_given(
    rotated: Rotated, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    forget_credentials()
    alpha, bravo = mesh_env.clusters
    generation = _generation(kube_clusters[0])
    stored = _stored(kube_clusters[1], kube_clusters[0])
    with pytest.raises(KubeError, match=f"is of generation {generation}, not {generation + 1}"):
        exchange_token(alpha, [bravo], ReaderTokenSecret(STABLE, generation + 1))
    monkeypatch.setattr(tasks.kube, "TOKEN_WAIT", 0.3)
    with pytest.raises(KubeError, match="interim has no token after 0s"):
        exchange_token(alpha, [bravo], ReaderTokenSecret(INTERIM, generation + 1))
    assert _stored(kube_clusters[1], kube_clusters[0]) == stored
    assert exchange_token(alpha, [], ReaderTokenSecret(INTERIM, generation + 1)) == []


def test_a_source_without_a_reader_token_is_refused_and_install_restores_it(
    rotated: Rotated, converged: None, mesh_env: MeshSpec, kube_clusters: list[kube.LocalCluster]
) -> None:
    alpha = kube_clusters[0]
    client.CoreV1Api(_admin(alpha)).delete_namespaced_secret(STABLE, NS)
    forget_credentials()
    with pytest.raises(KubeError, match="install the mesh first"):
        reader_token_secrets(mesh_env.clusters[0])
    with pytest.raises(MeshflowError, match=r"alpha: failed: cluster 'alpha' has no") as failed:
        _rotate(mesh_env)
    assert "bravo" not in str(failed.value)  # bravo's rotation finished
    assert _install(mesh_env).ok  # recreates it (generation 0) and exchanges its token
    assert _generation(alpha) == 0
    assert _stored(kube_clusters[1], alpha) == _token(alpha)


def test_tasks_are_named_by_generation_and_source(rotated: Rotated) -> None:
    g = rotated.generation["alpha"]
    names = [
        "read-reader-tokens-of-alpha",
        f"ensure-reader-token-{g + 1}-of-alpha",
        f"exchange-reader-token-{g + 1}-from-alpha",
        f"delete-reader-token-{g}-of-alpha",
        f"ensure-reader-token-{g + 2}-of-alpha",
        f"exchange-reader-token-{g + 2}-from-alpha",
        f"delete-reader-token-{g + 1}-of-alpha",
    ]
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=names))
        )
    assert set(names) <= {r.name for r in runs}


def test_the_artifact_names_secrets_and_nothing_prefect_stored_holds_a_token(
    rotated: Rotated, mesh_env: MeshSpec, prefect_server: PrefectServer
) -> None:
    async def artifact() -> str:
        async with get_client() as prefect:
            latest = await prefect.read_latest_artifacts()
        return "\n".join(str(a.data) for a in latest if a.key == "reader-tokens-e2e")

    text = asyncio.run(artifact())
    assert f"{STABLE} (generation" in text
    assert "| alpha |" in text and "| bravo |" in text  # noqa: PT018
    assert len(SEEN) >= 6
    assert not any(t in text for t in SEEN)
    assert not any(t in rotated.report.model_dump_json() for t in SEEN)
    APILogHandler().flush()
    assert scan(prefect_server.database.parent, SEEN) == []
