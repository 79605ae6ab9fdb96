"""install_mesh: parallel sub-flows vs one cluster after another vs the critical path.

Measured side by side in one run, on real control planes, the Azure emulator and a real Prefect
server, with latencies injected per cloud operation:

- ARM ``listClusterAdminCredential`` 500 ms, ``managedClusters`` GET 300 ms,
- every Key Vault secret/certificate call 80 ms,
- ``istioctl install`` 4 s (the stand-in sleeps; a real install waits minutes for istiod).

Runs, each from an empty vault and fresh clusters:

1. ``install_mesh`` on 1 cluster,
2. ``install_mesh`` on 4 clusters (sub-flows gathered concurrently),
3. the same steps on 4 clusters one after another, in the seed's order,
4. ``install_mesh`` again on the 4 installed clusters (nothing to change).

The critical path is computed from the task runs Prefect recorded for run 2: the longest chain
of dependent work (PKI, then the slowest cluster's chain, then the slowest remote-secret write,
then the slowest check), i.e. the wall time with zero orchestration overhead.
Targets (issue 4): run 2 within 1.3x of run 1; run 2 within 1.15x of its critical path.

Both Prefect server databases are measured, each in its own round: SQLite (the default) and
PostgreSQL. On SQLite, Prefect's server answers concurrent flow-run state writes with "database
is locked" and its client backs off for seconds (see ``sandbox/postgres.py``).

Usage: ``.venv/bin/python benchmarks/install_parallel.py [--database sqlite|postgres]
[--timeline]`` (about 6 minutes for both; needs ``make bootstrap``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.install import _pairs, _validate, install_cluster, install_mesh
from flows.pki import ensure_mesh_pki
from meshflow.spec import MeshSpec
from sandbox import ISTIOCTL_STANDIN, kube, postgres, processes
from sandbox import environment as env
from sandbox.azure.admin import EmulatorAdmin, start_emulator_process
from sandbox.prefect_server import start_prefect_server
from tasks.aks import forget_credentials
from tasks.kube import exchange_remote_secret

MESH_OBJECTS = ("istio-root-ca", "root-cert", "echoserver", "frontend-certificate")


@flow(name="install-mesh-sequential")
async def install_mesh_sequential(spec: MeshSpec) -> None:
    """The seed's order: the same steps, one cluster (and one pair) at a time."""
    await ensure_mesh_pki(spec)
    for c in spec.clusters:
        await install_cluster(spec, c.name)
    for s, t in _pairs(spec):
        await exchange_remote_secret(s.aks_block, s.name, t.aks_block, t.name)
    await _validate(spec)  # the checks are reads; the seed ran them as one step too


def inject_latencies(emulator: EmulatorAdmin) -> None:
    """Cloud-like latency on every operation the install makes."""
    for method, path, ms in (
        ("POST", r".*/listClusterAdminCredential$", 500),
        ("GET", r".*/managedClusters/[^/]+$", 300),
        ("*", r"^/(secrets|certificates|deletedsecrets)(/.*)?$", 80),
    ):
        emulator.add_fault(method=method, path=path, status=None, delay_ms=ms, times=100_000)


def reset_vault(emulator: EmulatorAdmin, specs: dict[str, MeshSpec]) -> None:
    """Empty the emulator's vault of every mesh object, so each run starts from nothing."""
    names = list(MESH_OBJECTS)
    for c in (c for spec in specs.values() for c in spec.clusters):
        names += [f"{c.name}-ca-cert", f"{c.name}-cert-chain"]
    for name in names:
        emulator.drop_certificate(name)
        emulator.drop_secret(name)


async def timed(coro_fn: Any, spec: MeshSpec) -> tuple[float, UUID]:
    """Wall seconds of one flow run, and its id."""
    forget_credentials()
    start = time.perf_counter()
    state = await coro_fn(spec, return_state=True)
    wall = time.perf_counter() - start
    if not state.is_completed():
        raise RuntimeError(f"{coro_fn.name} did not complete: {state.message}")
    return wall, state.state_details.flow_run_id


def _seconds(run: Any) -> float:
    start, end = run.start_time, run.end_time
    return (end - start).total_seconds() if isinstance(start, datetime) and end else 0.0


async def recorded_runs(parent_id: UUID, timeout: float = 120) -> tuple[list[Any], list[Any]]:
    """All flow and task runs, once the server has recorded every task run under ``parent_id``.

    Task-run states travel as events, so they reach the server a little after the flow ends.
    """
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            flows = await client.read_flow_runs(limit=200)
            tasks = await client.read_task_runs(limit=200)
            mine = {parent_id} | {f.id for f in flows if f.parent_task_run_id is not None}
            pending = [t for t in tasks if t.flow_run_id in mine and t.end_time is None]
            if not pending or time.monotonic() > deadline:
                return flows, tasks
            await asyncio.sleep(1)


async def critical_path(parent_id: UUID) -> dict[str, float]:
    """The longest dependent chain of task work under the ``install-mesh`` run ``parent_id``."""
    flows, tasks = await recorded_runs(parent_id)
    children: dict[UUID, list[Any]] = defaultdict(list)
    for t in tasks:
        children[t.flow_run_id].append(t)
    parent_tasks = {t.id: t for t in children[parent_id]}
    subflows = [f for f in flows if f.parent_task_run_id in parent_tasks]

    def longest(run_id: UUID, name: str) -> float:
        return max((_seconds(t) for t in children[run_id] if t.name.startswith(name)), default=0)

    pki = next(f for f in subflows if _FLOW_NAMES.get(f.flow_id) == "ensure-mesh-pki")
    pki_path = max(
        longest(pki.id, "ensure-root-ca")
        + max(longest(pki.id, "ensure-intermediate-ca"), longest(pki.id, "ensure-ingress")),
        longest(pki.id, "ensure-frontend"),
    )
    cluster_paths = [
        max(
            longest(f.id, "get-cluster-credentials"),
            longest(f.id, "describe-aks-cluster"),
            longest(f.id, "describe-key-vault"),
        )
        + sum(_seconds(t) for t in children[f.id] if t.name.startswith("apply-manifests"))
        + longest(f.id, "install-istio")
        for f in subflows
        if _FLOW_NAMES.get(f.flow_id) == "install-cluster"
    ]
    exchange = longest(parent_id, "exchange-remote-secret")
    checks = max(
        longest(parent_id, "check-remote-secret"),
        longest(parent_id, "check-istiod-sync"),
        longest(parent_id, "call-echoserver-across"),
    )
    return {
        "pki": pki_path,
        "slowest cluster": max(cluster_paths),
        "remote secrets": exchange,
        "validation": checks,
    }


_FLOW_NAMES: dict[UUID, str] = {}


async def print_timeline(parent_id: UUID) -> None:
    """Every flow and task run under ``parent_id``: start offset and duration (diagnostics)."""
    flow_list, tasks = await recorded_runs(parent_id)
    flows = {f.id: f for f in flow_list}
    parent = flows[parent_id]
    ids = {parent_id} | {
        f.id
        for f in flows.values()
        if f.parent_task_run_id in {t.id for t in tasks if t.flow_run_id == parent_id}
    }
    rows = [
        (f.start_time, f"flow {_FLOW_NAMES.get(f.flow_id, '?')}", _seconds(f))
        for f in flows.values()
        if f.id in ids
    ]
    rows += [(t.start_time, f"  task {t.name}", _seconds(t)) for t in tasks if t.flow_run_id in ids]
    t0 = parent.start_time
    print("\ntimeline of the 4-cluster parallel run (start offset, duration)")
    for start, label, seconds in sorted(r for r in rows if r[0]):
        print(f"  +{(start - t0).total_seconds():6.2f} s {seconds:6.2f} s  {label}")


async def _load_flow_names() -> None:
    async with get_client() as client:
        for f in await client.read_flows():
            _FLOW_NAMES[f.id] = f.name


def reset_clusters(clusters: list[kube.LocalCluster]) -> None:
    """Remove what an install made, so the next round starts from empty clusters."""
    from kubernetes import config

    from tasks.kube import request_json

    load = config.new_client_from_config  # untyped in the kubernetes client
    apis = [load(config_file=str(c.admin_kubeconfig)) for c in clusters]  # type: ignore[no-untyped-call]
    for api in apis:
        for ns in ("istio-system", "istio-ingress", "echoserver"):
            if request_json(api, "GET", f"/api/v1/namespaces/{ns}") is not None:
                request_json(api, "DELETE", f"/api/v1/namespaces/{ns}")
        for kind in ("clusterroles", "clusterrolebindings"):
            path = f"/apis/rbac.authorization.k8s.io/v1/{kind}"
            for item in (request_json(api, "GET", path) or {}).get("items", []):
                if item["metadata"]["name"].startswith("istio-reader-clusterrole-"):
                    request_json(api, "DELETE", f"{path}/{item['metadata']['name']}")
    deadline = time.monotonic() + 120
    for api in apis:
        for ns in ("istio-system", "istio-ingress", "echoserver"):
            while request_json(api, "GET", f"/api/v1/namespaces/{ns}") is not None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"namespace {ns} was not deleted within 120 s")
                time.sleep(0.5)


async def run_all(
    emulator: EmulatorAdmin, sets: dict[str, list[kube.LocalCluster]], database: str
) -> None:
    """Measure the four runs on one database and print the table."""
    specs = {
        name: env.wire_environment(emulator, cl, environment=name) for name, cl in sets.items()
    }
    results: dict[str, float] = {}
    reset_vault(emulator, specs)
    results["1 cluster, parallel flow"], _ = await timed(install_mesh, specs["one"])
    reset_vault(emulator, specs)
    results["4 clusters, parallel flow"], parallel_id = await timed(install_mesh, specs["four"])
    reset_vault(emulator, specs)
    results["4 clusters, one after another"], _ = await timed(install_mesh_sequential, specs["seq"])
    results["4 clusters, re-run, nothing changed"], _ = await timed(install_mesh, specs["seq"])
    from prefect.events.worker import EventsWorker

    await asyncio.to_thread(EventsWorker.drain_all, 60)  # deliver queued task-run events
    await _load_flow_names()
    if "--timeline" in sys.argv:
        await print_timeline(parallel_id)
    path = await critical_path(parallel_id)
    critical = sum(path.values())

    print(f"\n== Prefect server on {database} ==")
    print("install_mesh wall time (injected latencies: ARM creds 500 ms, AKS GET 300 ms,")
    print("Key Vault 80 ms per call, istioctl install 4 s)")
    for label, seconds in results.items():
        print(f"  {label:<40} {seconds:7.2f} s")
    print(f"  {'4 clusters, critical path (task work)':<40} {critical:7.2f} s")
    for part, seconds in path.items():
        print(f"      {part:<36} {seconds:7.2f} s")
    one, four = results["1 cluster, parallel flow"], results["4 clusters, parallel flow"]
    seq = results["4 clusters, one after another"]
    rerun = results["4 clusters, re-run, nothing changed"]
    print("\nratios")
    print(f"  4 clusters / 1 cluster (parallel)       {four / one:5.2f}x   target <= 1.30")
    print(f"  4 clusters wall / critical path         {four / critical:5.2f}x   target <= 1.15")
    print(f"  one-after-another / parallel            {seq / four:5.2f}x")
    print(f"  first run / re-run (4 clusters)         {seq / rerun:5.2f}x")


def main() -> None:
    """Start everything, measure on each database, stop everything."""
    # SIGTERM (a CI timeout, `kill`) becomes SystemExit so the clean-up below still runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("MESHFLOW_ISTIOCTL", str(ISTIOCTL_STANDIN))
    os.environ["MESHFLOW_STANDIN_INSTALL_SECONDS"] = "4"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    root = Path(tempfile.mkdtemp(prefix="meshflow-bench-"))
    try:
        print("starting 9 control planes, the Azure emulator and a Prefect server ...")
        names = {"one": ["solo"], "four": ["p1", "p2", "p3", "p4"], "seq": ["s1", "s2", "s3", "s4"]}
        all_clusters = kube.start_clusters([n for v in names.values() for n in v], root / "k")
        by_name = {c.name: c for c in all_clusters}
        sets = {k: [by_name[n] for n in v] for k, v in names.items()}
        databases = ["sqlite", "postgres"]
        if "--database" in sys.argv:
            databases = [sys.argv[sys.argv.index("--database") + 1]]
        # A separate process, like Azure: its work must not compete with the flow's threads.
        emulator = start_emulator_process(
            root / "azure", marker=str(root), config={"pending_polls": 0}
        )
        inject_latencies(emulator)
        for i, database in enumerate(databases):
            if i:
                reset_clusters(all_clusters)
            pg = postgres.start(marker=str(root)) if database == "postgres" else None
            server = start_prefect_server(
                root / f"prefect-{database}", marker=str(root),
                database_url=pg.url if pg else None,
            )  # fmt: skip
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                asyncio.run(run_all(emulator, sets, database))
            processes.stop([(server.pid, str(root))])
            if pg:
                processes.stop([(pg.pid, str(root))])
                postgres.remove(pg.directory)
    finally:
        processes.stop(processes.running_under(str(root)))
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
