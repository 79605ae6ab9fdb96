"""Distributed fan-out on real workers: ``install_mesh(fan_out="deployments")`` on 3 clusters.

Two ``prefect worker start`` process workers on the pool of a test environment (``fanout``),
the deployments registered by ``deploy_environment`` (crash detection included), the session's
two control planes and a third started here. The parent runs in this process; its children run
on the workers, each as the flow-run process a worker starts (``python -m prefect.engine`` or
Prefect's workspace supervisor, a child of the worker), and write their results into the one
result folder the parent reads.

- Every child is linked to the parent run, one completed child per cluster, and the end state
  is the in-process fan-out's: an in-process install after it writes nothing.
- A worker stopped while its child installs a cluster: SIGTERM to the worker alone (what
  ``kill`` does), then SIGKILL to the worker and its flow-run process (a machine that died). The
  run completes on the other worker, or fails naming the cluster; it never completes with a
  cluster missing, and no cluster's remote secret is written unless its install completed.
  Under load the stopped worker may also be starting another cluster's run, left ``Pending``:
  the second crash automation (``tests/test_crash_detection.py``) marks it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from kubernetes import client, config
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterStartTime,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

from deployments.automations import crashed_runs_name
from deployments.deploy import deploy_environment
from deployments.render import pool_name
from flows.install import MeshReport, install_mesh
from meshflow.spec import MeshSpec, PkiSettings
from sandbox import environment as env
from sandbox import kube, processes, worker
from sandbox.azure import AzureEmulator
from sandbox.istioctl_standin import LATENCY_ENV
from sandbox.prefect_server import PrefectServer
from tasks.aks import forget_credentials
from tasks.istio import INSTALL_RECORD

ENV = "fanout"
THIRD = "charlie"
WORKERS = ("fanout-worker-1", "fanout-worker-2")
CHILD_DEPLOYMENT = f"install-cluster-{ENV}"
RUN_TIMEOUT = 300.0
"""The longest a parent run may take here: a dead run is marked Crashed 90-120 s after the
stop, a run the stopped worker was still starting 2-2.5 min after it took it."""
INSTALL_SECONDS = 15
"""How long the istioctl stand-in's install takes in the mid-run tests: time to stop a worker."""


@dataclass
class Fanout:
    """The test environment: spec, clusters, the workers (by name: pid) and their markers."""

    spec: MeshSpec
    root: Path
    clusters: dict[str, kube.LocalCluster]
    api_url: str
    workers: dict[str, int] = field(default_factory=dict)

    def marker(self, name: str) -> str:
        return str(self.root / "workers" / name)

    def start_worker(self, name: str) -> None:
        self.workers[name] = worker.start_worker(
            self.root, self.api_url, marker=self.marker(name), name=name, pool=pool_name(ENV)
        )

    def deploy(self, **extra_env: str) -> Any:
        job_env = worker.job_env(self.root) | extra_env
        return asyncio.run(deploy_environment(ENV, self.spec, job_env=job_env))


def _core(cluster: kube.LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(
        config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    )


def _remote_secrets_of(source: str, clusters: dict[str, kube.LocalCluster]) -> dict[str, bool]:
    """Whether ``istio-remote-secret-<source>`` exists, per other cluster."""
    found = {}
    for name, c in clusters.items():
        if name == source:
            continue
        try:
            _core(c).read_namespaced_secret(f"istio-remote-secret-{source}", "istio-system")
            found[name] = True
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            found[name] = False
    return found


def _delete_remote_secrets_of(source: str, clusters: dict[str, kube.LocalCluster]) -> None:
    for name, c in clusters.items():
        if name != source:
            with contextlib.suppress(client.ApiException):
                _core(c).delete_namespaced_secret(f"istio-remote-secret-{source}", "istio-system")


@pytest.fixture(scope="module")
def fanout(
    tmp_path_factory: pytest.TempPathFactory,
    kube_clusters: list[kube.LocalCluster],
    azure_emulator: AzureEmulator,
    prefect_server: PrefectServer,
    istioctl_standin: Path,
) -> Iterator[Fanout]:
    root = tmp_path_factory.mktemp("fanout")
    third = kube.start_clusters([THIRD], root / "clusters")[0]
    clusters = {c.name: c for c in [*kube_clusters, third]}
    try:
        wired = env.wire_environment(
            azure_emulator, list(clusters.values()), environment=ENV,
            pki=PkiSettings(ca_key_size=2048),
        )  # fmt: skip
        # No ingress: the session's first install with ingress is test_ingress_flow's, which
        # counts the objects it creates on the session's first cluster.
        spec = wired.model_copy(update={"clusters": tuple(
            c.model_copy(update={"ingress": False}) for c in wired.clusters)})  # fmt: skip
        with temporary_settings(updates={PREFECT_RESULTS_LOCAL_STORAGE_PATH: root / "results"}):
            fan = Fanout(spec, root, clusters, prefect_server.api_url)
            result = fan.deploy()
            assert len(result.crash_detection) == 2
            starters = [
                threading.Thread(target=contextvars.copy_context().run, args=(fan.start_worker, n))
                for n in WORKERS
            ]
            for t in starters:
                t.start()
            for t in starters:
                t.join(timeout=worker.READY_TIMEOUT + 10)
            assert set(fan.workers) == set(WORKERS)
            yield fan
    finally:
        processes.stop(processes.running_under(str(root / "workers")))
        _cancel_unfinished_runs()  # nothing of this module runs on into the next tests
        # The session's clusters go back to their own mesh: no secret of the third one.
        _delete_remote_secrets_of(THIRD, clusters)
        third.stop()
        processes.stop(processes.running_under(str(root)))


# -- helpers -----------------------------------------------------------------------------------


def _cancel_unfinished_runs() -> None:
    """Cancel every run of this module's environment that has not ended (a parent left waiting)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.states import Cancelled

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[ENV]))
        )
        for run in runs:
            if run.state is not None and not run.state.is_final():
                prefect.set_flow_run_state(
                    run.id, Cancelled(message="test module ended"), force=True
                )


def _bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()`` in a thread; its result, or a test failure after ``seconds`` (never a hang)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    # The thread sees this test's Prefect settings (API URL, result folder): they are context.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds:.0f}s")
    if "error" in out:
        raise out["error"]
    return out["value"]


def _install(spec: MeshSpec, **kwargs: Any) -> Any:
    forget_credentials()
    return asyncio.run(install_mesh(spec, return_state=True, **kwargs))  # type: ignore[call-overload]


def _children(parent: UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as prefect:
        deployment = prefect.read_deployment_by_name(f"install-cluster/{CHILD_DEPLOYMENT}")
        return [
            r
            for r in prefect.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
                )
            )
            if r.deployment_id == deployment.id
        ]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (e.split(b"=", 1) for e in raw.split(b"\0") if b"=" in e)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _processes_of_run(fan: Fanout, run_id: UUID) -> dict[str, list[int]]:
    """Per worker name, its descendants that run flow run ``run_id`` (by PREFECT__FLOW_RUN_ID)."""
    found: dict[str, list[int]] = {}
    for name in fan.workers:
        for pid, _ in processes.running_under(fan.marker(name)):
            if _environ(pid).get("PREFECT__FLOW_RUN_ID") == str(run_id):
                found.setdefault(name, []).append(pid)
    return found


def _running_child(cluster: str, since: float, timeout: float = 90.0) -> FlowRun:
    """The ``install-cluster-<cluster>`` run started after ``since`` once it is Running."""
    after = datetime.fromtimestamp(since, tz=UTC)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as prefect:
        while time.monotonic() < deadline:
            runs = prefect.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[f"install-cluster-{cluster}"]),
                    start_time=FlowRunFilterStartTime(after_=after),
                ),
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[CHILD_DEPLOYMENT])),
            )  # fmt: skip
            running = [r for r in runs if r.state and r.state.type == StateType.RUNNING]
            if running:
                return running[0]
            time.sleep(0.3)
    pytest.fail(f"no Running install-cluster-{cluster} within {timeout:.0f}s")


def _wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def _state_of(run_id: UUID) -> tuple[StateType | None, str, str | None]:
    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(run_id)
    state = run.state
    return (
        state.type if state else None,
        state.name if state else "",
        state.message if state else None,
    )


def _summary(report: MeshReport) -> tuple[list[str], list[tuple[str, str]]]:
    return (
        sorted(c.cluster for c in report.clusters),
        sorted((s.cluster, s.object) for s in report.remote_secrets),
    )


# -- the tests ---------------------------------------------------------------------------------


def test_fan_out_on_two_workers_is_linked_once_per_cluster_and_ends_as_in_process(
    fanout: Fanout,
) -> None:
    state = _bounded(lambda: _install(fanout.spec, fan_out="deployments"), RUN_TIMEOUT)
    assert state.is_completed(), state.message
    report: MeshReport = state.result()
    parent = state.state_details.flow_run_id

    children = _children(parent)
    with get_client(sync_client=True) as prefect:
        for child in children:
            assert child.parent_task_run_id is not None, child.name
            assert prefect.read_task_run(child.parent_task_run_id).flow_run_id == parent
            assert {"meshflow", ENV} <= set(child.tags)
    completed = sorted(c.name for c in children if c.state and c.state.is_completed())
    assert completed == [f"install-cluster-{n}" for n in ("alpha", "bravo", THIRD)]
    assert len(children) == 3

    names, secrets = _summary(report)
    assert names == ["alpha", "bravo", THIRD]
    assert len(secrets) == 6  # N x (N - 1)
    again = _bounded(lambda: _install(fanout.spec), RUN_TIMEOUT)
    assert again.is_completed(), again.message
    in_process: MeshReport = again.result()
    assert in_process.writes == 0
    assert _summary(in_process) == (names, secrets)


@dataclass
class Stopped:
    """What stopping a worker mid-install did, as observed."""

    worker: str
    signal: str
    child: UUID
    pids: list[int]
    alive_after: list[int]
    child_state_after: str
    seconds_to_final: float | None
    outcome: Any = field(repr=False)


def _stop_worker_mid_install(fan: Fanout, sig: signal.Signals, *, whole_group: bool) -> Stopped:
    """Start a fan-out, stop the worker that installs the third cluster while istioctl runs.

    ``whole_group``: signal its flow-run processes too (the machine died), else the worker only.
    """
    fan.deploy(**{LATENCY_ENV: str(INSTALL_SECONDS)})  # the install takes long enough to catch
    with contextlib.suppress(client.ApiException):  # a re-install, istioctl included
        _core(fan.clusters[THIRD]).delete_namespaced_config_map(INSTALL_RECORD, "istio-system")
    _delete_remote_secrets_of(THIRD, fan.clusters)  # written again only by a completed join
    since = time.time()
    outcome: dict[str, Any] = {}

    def parent() -> None:
        try:
            outcome["state"] = _install(fan.spec, fan_out="deployments")
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(parent,), daemon=True)
    thread.start()
    try:
        child = _running_child(THIRD, since)
        found = _wait_for(
            f"the flow-run process of {child.name}", lambda: _processes_of_run(fan, child.id), 60
        )
        (name, run_pids), *_ = found.items()
        marker = fan.marker(name)
        _wait_for(
            "istioctl installing on the third cluster",
            lambda: any("istioctl" in _cmdline(p) for p, _ in
                        processes.running_under(marker)),
            60,
        )  # fmt: skip
        targets = [p for p, _ in processes.running_under(marker)] if whole_group else []
        worker_pid = fan.workers.pop(name)
        for pid in [worker_pid, *targets]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        killed_at = time.time()
        time.sleep(5)
        alive = [p for p in [worker_pid, *run_pids] if not processes.has_exited(p)]
        _, name_after, message_after = _state_of(child.id)
        thread.join(RUN_TIMEOUT)
        if thread.is_alive():
            pytest.fail(
                f"the fan-out did not end within {RUN_TIMEOUT:.0f}s of the stop\n"
                + _diagnosis(fan, since)
            )
        final = _state_of(child.id)
        with get_client(sync_client=True) as prefect:
            ended = prefect.read_flow_run(child.id).state
        seconds = None
        if ended is not None and ended.is_final():
            seconds = ended.timestamp.timestamp() - killed_at
    finally:
        thread.join(RUN_TIMEOUT)
        # the stopped worker (and anything left of its runs) is replaced for the next test
        processes.stop(processes.running_under(fan.marker(name)) if "name" in locals() else [])
        fan.deploy()
    if "error" in outcome:
        raise outcome["error"]
    stopped = Stopped(
        worker=name, signal=sig.name, child=child.id, pids=[worker_pid, *run_pids],
        alive_after=alive, child_state_after=f"{name_after}: {message_after}",
        seconds_to_final=seconds, outcome=outcome["state"],
    )  # fmt: skip
    print(  # noqa: T201 - what Prefect did, for the report
        f"observed: {stopped}; first child ended {final[1]} ({final[2]}); the fan-out ended "
        f"{stopped.outcome.name}: {stopped.outcome.message}"
    )
    fan.start_worker(name)
    return stopped


def _diagnosis(fan: Fanout, since: float) -> str:
    """What a stuck fan-out left to look at: this environment's runs since ``since``, the
    remaining workers' processes and the tail of each worker's log."""
    lines = []
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=datetime.fromtimestamp(since, tz=UTC))
            )
        )
        runs += prefect.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[CHILD_DEPLOYMENT]))
        )
    seen = set()
    for r in runs:
        if r.id in seen:
            continue
        seen.add(r.id)
        state = r.state
        lines.append(
            f"run {r.name} {r.id}: {state.name if state else None} "
            f"({state.message if state else ''})"
            f" created {r.created} expected {r.expected_start_time} worker pool queue "
            f"{r.work_queue_name} infra pid {r.infrastructure_pid}"
        )
    for name, pid in fan.workers.items():
        under = processes.running_under(fan.marker(name))
        lines.append(f"worker {name} pid {pid} alive {not processes.has_exited(pid)}: "
                     f"{[_cmdline(p)[:120] for p, _ in under]}")  # fmt: skip
    for log in sorted((fan.root / "worker").glob("*.log")):
        lines.append(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-4000:]}")
    return "\n".join(lines)


def _never_half_joined(fan: Fanout, stopped: Stopped) -> None:
    """Completed with every cluster joined, or failed naming the cluster with no secret of it."""
    state = stopped.outcome
    secrets = _remote_secrets_of(THIRD, fan.clusters)
    children = [c for c in _children(state.state_details.flow_run_id) if THIRD in c.name]
    assert 1 <= len(children) <= 2  # the first, and one start after a crash
    if state.is_completed():
        names, pairs = _summary(state.result())
        assert names == ["alpha", "bravo", THIRD]
        assert len(pairs) == 6
        assert secrets == {"alpha": True, "bravo": True}
        assert sum(1 for c in children if c.state and c.state.is_completed()) == 1
    else:
        assert state.is_failed()
        assert f"cluster {THIRD}" in (state.message or "")
        assert secrets == {"alpha": False, "bravo": False}


def _restarted_after_missed_heartbeats(fan: Fanout, stopped: Stopped) -> None:
    """The stopped run's processes are gone, nobody marked it at once, the heartbeat automation
    marked it Crashed, and the fan-out completed (never half joined)."""
    _never_half_joined(fan, stopped)
    assert stopped.alive_after == []
    assert stopped.child_state_after.startswith("Running")
    with get_client(sync_client=True) as prefect:
        first = prefect.read_flow_run(stopped.child).state
    assert first is not None
    assert first.type == StateType.CRASHED
    assert crashed_runs_name(ENV) in (first.message or "")
    assert stopped.outcome.is_completed()


def test_a_worker_stopped_by_sigterm_is_detected_by_heartbeat_and_its_run_restarted(
    fanout: Fanout,
) -> None:
    # Prefect 3.9.1: the worker stops its flow-run process with it and leaves the run Running;
    # the heartbeats stop, the automation marks it Crashed, the fan-out starts it again once.
    stopped = _stop_worker_mid_install(fanout, signal.SIGTERM, whole_group=False)
    _restarted_after_missed_heartbeats(fanout, stopped)


def test_a_machine_that_died_is_detected_by_heartbeat_and_its_run_restarted(
    fanout: Fanout,
) -> None:
    # SIGKILL to the worker and its flow-run processes: nothing reports, the run stays Running
    # until its missing heartbeats mark it Crashed, and the fan-out starts it again once.
    stopped = _stop_worker_mid_install(fanout, signal.SIGKILL, whole_group=True)
    _restarted_after_missed_heartbeats(fanout, stopped)
