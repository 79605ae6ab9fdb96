"""install_mesh: parallel sub-flows vs one cluster after another vs the critical path.

Measured side by side in one run, on real control planes, the Azure emulator and a real Prefect
server, with latencies injected per cloud operation:

- ARM ``listClusterAdminCredential`` 500 ms, ``managedClusters`` GET 300 ms,
- every Key Vault secret/certificate call 80 ms,
- Key Vault's key generation: as long as making the key took here (its CPU time), without
  taking this machine's CPU during the run. Key Vault makes keys on its own hardware, where
  requests made at once do not slow each other; so the emulator makes them before each run
  (``--keys-on-demand``, a diagnostic, makes them during the run on these 2 cores instead),
- ``istioctl install`` 4 s (the stand-in sleeps; a real install waits minutes for istiod).

Runs, each from an empty vault and fresh clusters:

1. ``install_mesh`` on 1 cluster,
2. ``install_mesh`` on 4 clusters (sub-flows gathered concurrently),
   (1 and 2 alternate ``--repeat`` times, 3 by default; medians are compared),
3. the same steps on 4 clusters one after another, in the seed's order,
4. ``install_mesh`` again on the 4 installed clusters (nothing to change).

The critical path is computed from the task runs Prefect recorded for each run 2: the longest
chain of dependent work (root CA, beside it each cluster's key request; then per cluster the
longer of credentials → namespaces and its intermediate CA, then Istio and the sample workload;
then, once every cluster is installed, each source's remote-secret exchange, then the checks
of that source's secrets, and beside them, once every exchange is done, the data-plane checks),
i.e. the wall time with zero orchestration overhead.
Targets (issue 4): run 2 within 1.3x of run 1; run 2 within 1.15x of its critical path.
``--cpu`` prints the CPU seconds each kind of process used during each run; ``--ca-key-size
2048`` (a diagnostic: Istio's CA keys are RSA 4096) shows what RSA key generation costs.

Both Prefect server databases are measured, each in its own round: SQLite (the default) and
PostgreSQL. On SQLite, Prefect's server answers concurrent flow-run state writes with "database
is locked" and its client backs off for seconds (see ``sandbox/postgres.py``).

Usage: ``.venv/bin/python benchmarks/install_parallel.py [--database sqlite|postgres]
[--repeat N] [--timeline] [--cpu] [--ca-key-size BITS] [--keys-on-demand]`` (about 10 minutes
for both databases; needs ``make bootstrap``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentTaskRunId,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.ingress import expose_cluster, ingress_certificates
from flows.install import _data_plane, install_cluster, install_mesh
from meshflow.spec import MeshSpec, PkiSettings
from sandbox import ISTIOCTL_STANDIN, kube, postgres, processes
from sandbox import environment as env
from sandbox.azure.admin import EmulatorAdmin, start_emulator_process
from sandbox.prefect_server import start_prefect_server
from tasks.aks import forget_credentials
from tasks.kube import check_remote_secrets, exchange_remote_secrets
from tasks.pki import (
    ROOT_CA,
    ROOT_CERT_OBJECT,
    ROOT_KEY,
    ensure_frontend_certificate,
    ensure_ingress_certificate,
    ensure_intermediate_ca,
    ensure_root_ca,
)

MESH_OBJECTS = (ROOT_CA, ROOT_CERT_OBJECT, "root-cert", "echoserver", "frontend-certificate")


@flow(name="install-mesh-sequential")
async def install_mesh_sequential(spec: MeshSpec) -> None:
    """The seed's order: the same steps, one at a time (PKI, each cluster, each ordered pair)."""
    pki = spec.pki_store
    await ensure_root_ca(pki, spec.cluster_names)
    for c in spec.clusters:
        await ensure_intermediate_ca(pki, c)
    await ensure_ingress_certificate(pki)
    await ensure_frontend_certificate(pki)
    for c in spec.clusters:
        await install_cluster(spec, c.name)  # its CA exists: only read here
    pairs = [(s, t) for s in spec.clusters for t in spec.clusters if s != t]
    for s, t in pairs:  # the seed: one create-remote-secret | kubectl apply at a time
        await exchange_remote_secrets(s, (t,))
    for s, t in pairs:
        await check_remote_secrets(s, (t,))
    await _data_plane(spec, spec.clusters)
    await ingress_certificates(spec)  # already there: read back
    for c in spec.ingress_clusters:
        await expose_cluster(spec, c.name)


def inject_latencies(emulator: EmulatorAdmin) -> None:
    """Cloud-like latency on every operation the install makes."""
    for method, path, ms in (
        ("POST", r".*/listClusterAdminCredential$", 500),
        ("GET", r".*/managedClusters/[^/]+$", 300),
        ("*", r"^/(secrets|certificates|deletedsecrets|keys)(/.*)?$", 80),
    ):
        emulator.add_fault(method=method, path=path, status=None, delay_ms=ms, times=100_000)


def reset_vault(emulator: EmulatorAdmin, specs: dict[str, MeshSpec]) -> None:
    """Empty the emulator's vault of every mesh object, so each run starts from nothing."""
    emulator.drop_key(ROOT_KEY)
    names = list(MESH_OBJECTS)
    for c in (c for spec in specs.values() for c in spec.clusters):
        names += [f"{c.name}-ca-cert", f"{c.name}-cert-chain"]
    for name in names:
        emulator.drop_certificate(name)
        emulator.drop_secret(name)


def make_keys_ahead(emulator: EmulatorAdmin, spec: MeshSpec) -> dict[int, list[float]]:
    """Have the emulator make the keys Key Vault will make in ``spec``'s install, before it.

    Key Vault makes keys on its own hardware; the emulator shares this machine's 2 cores with
    the flow. Made ahead, each key costs its creation request as long as making it took, but
    no CPU during the run (see ``sandbox.azure.x509util``). The root CA key and the
    intermediate CAs' keys, the ingress leaf's and the frontend certificate's (Key Vault's
    default policy: RSA 2048). Per key size, the seconds each new key took.
    """
    wanted = Counter({spec.pki.ca_key_size: 1 + len(spec.clusters)})
    wanted[spec.pki.leaf_key_size] += 1
    wanted[2048] += 1
    return {size: emulator.make_keys(size, count) for size, count in wanted.items()}


async def timed(coro_fn: Any, spec: MeshSpec, *, cpu: bool) -> tuple[float, UUID]:
    """Wall seconds of one flow run, and its id; ``cpu``: print where the CPU went."""
    forget_credentials()
    before = cpu_seconds()
    start = time.perf_counter()
    state = await coro_fn(spec, return_state=True)
    wall = time.perf_counter() - start
    if cpu:
        after = cpu_seconds()
        spent = {k: after[k] - before.get(k, 0.0) for k in after}
        print(f"\nCPU seconds during {coro_fn.name} on {len(spec.clusters)} cluster(s), "
              f"wall {wall:.2f} s: total {sum(spent.values()):.2f}")  # fmt: skip
        for kind, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:<32} {seconds:6.2f}")
    if not state.is_completed():
        raise RuntimeError(f"{coro_fn.name} did not complete: {state.message}")
    return wall, state.state_details.flow_run_id


def _seconds(run: Any) -> float:
    start, end = run.start_time, run.end_time
    return (end - start).total_seconds() if isinstance(start, datetime) and end else 0.0


async def recorded_runs(parent_id: UUID, timeout: float = 120) -> tuple[list[Any], list[Any]]:
    """The flow run ``parent_id``, its sub-flow runs and all their task runs, once recorded.

    Task-run states travel as events, so they reach the server a little after the flow ends.
    """

    def in_runs(ids: list[UUID]) -> FlowRunFilter:
        return FlowRunFilter(id=FlowRunFilterId(any_=ids))

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            parent = await client.read_flow_run(parent_id)
            own = await client.read_task_runs(flow_run_filter=in_runs([parent_id]), limit=200)
            subflows = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in own])
                ),
                limit=200,
            )
            ids = [parent_id, *(f.id for f in subflows)]
            tasks = await client.read_task_runs(flow_run_filter=in_runs(ids), limit=200)
            if all(t.end_time for t in tasks) or time.monotonic() > deadline:
                return [parent, *subflows], tasks
            await asyncio.sleep(1)


async def critical_path(parent_id: UUID) -> dict[str, float]:
    """The longest dependent chain of task work under the ``install-mesh`` run ``parent_id``.

    The flow's dependencies: the blocks checked; then the root CA and, beside it, each
    cluster's key request → each cluster
    (once both are done): max(credentials → namespaces, its intermediate CA, istioctl) → Istio →
    sample
    workload; once every cluster is installed, each source's exchange into the others, then
    that source's checks; beside them, once every exchange is done, the data-plane checks. The
    ingress certificate follows the root; the frontend certificate needs nothing. Once the join
    and both certificates are done, each ingress cluster's ``expose-cluster-<c>``, in parallel.
    Runs are matched by the names the flow gives them (``install-cluster-<c>``,
    ``exchange-remote-secrets-from-<s>``, ``check-remote-secrets-of-<s>``, ...).
    """
    flows, tasks = await recorded_runs(parent_id)
    children: dict[UUID, list[Any]] = defaultdict(list)
    for t in tasks:
        children[t.flow_run_id].append(t)
    parent_tasks = {t.id: t for t in children[parent_id]}
    subflows = [f for f in flows if f.parent_task_run_id in parent_tasks]

    def longest(run_id: UUID, name: str) -> float:
        return max((_seconds(t) for t in children[run_id] if t.name.startswith(name)), default=0)

    def cluster_path(run_id: UUID) -> float:
        pre, post = sorted(
            (t for t in children[run_id] if t.name.startswith("apply-manifests")),
            key=lambda t: t.start_time,
        )
        prepare = max(
            longest(run_id, "get-cluster-credentials"), longest(run_id, "describe-aks-cluster")
        ) + _seconds(pre)
        ca = longest(run_id, "ensure-intermediate-ca")
        binary = longest(run_id, "fetch-istioctl")
        return max(prepare, ca, binary) + longest(run_id, "install-istio") + _seconds(post)

    checked_blocks = longest(parent_id, "check-blocks")  # before any write
    root = checked_blocks + longest(parent_id, "ensure-root-ca")
    clusters = {  # from the start: after the root and the cluster's own key request
        name: max(root, checked_blocks + longest(parent_id, f"request-intermediate-ca-{name}"))
        + cluster_path(f.id)
        for f in subflows
        if _FLOW_NAMES.get(f.flow_id) == "install-cluster"
        for name in [f.name.removeprefix("install-cluster-")]
    }
    everyone = max(clusters.values())  # each source's exchange waits for every cluster
    exchanged = {
        s: everyone + longest(parent_id, f"exchange-remote-secrets-from-{s}") for s in clusters
    }
    checked = [  # each source's check follows its own exchange
        exchanged[s] + longest(parent_id, f"check-remote-secrets-of-{s}") for s in clusters
    ]
    data_plane = max(exchanged.values()) + max(  # beside the checks
        longest(parent_id, "check-istiod-sync"), longest(parent_id, "call-echoserver-across")
    )
    ingress = root + longest(parent_id, "ensure-ingress")
    frontend = checked_blocks + longest(parent_id, "ensure-frontend")  # needs no root
    joined = max([*clusters.values(), *checked, data_plane, ingress, frontend])
    exposed = [_seconds(f) for f in subflows if _FLOW_NAMES.get(f.flow_id) == "expose-cluster"]
    end = joined + max(exposed, default=0.0)
    return {
        "blocks checked": checked_blocks,
        "then the root CA": root - checked_blocks,
        "then the slowest cluster (or its key request)": everyone - root,
        "then exchange and checks (data-plane checks beside)": joined - everyone,
        "then ingress (expose-cluster)": end - joined,
    }


_FLOW_NAMES: dict[UUID, str] = {}
_BINARIES = {"kube-apiserver", "etcd", "kube-controller", "postgres"}  # comm: 15 characters
_PYTHON_SERVICES = {"prefect server": "-m prefect server start", "emulator": "sandbox.azure"}


def _kind(pid: Path) -> str | None:
    """Which sandbox service process ``pid`` is: by executable name, or a Python service's argv.

    Not by a substring of the whole command line: this benchmark's own ``--database postgres``
    would make it count itself as PostgreSQL.
    """
    comm = (pid / "comm").read_text().strip()
    if comm in _BINARIES:
        return "kube-controller-manager" if comm == "kube-controller" else comm
    cmdline = (pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return next((k for k, marker in _PYTHON_SERVICES.items() if marker in cmdline), None)


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far, by kind of process (this flow process and its children apart).

    A service's child processes (the emulator's key-checking workers) count as the service.
    """
    tick = os.sysconf("SC_CLK_TCK")
    kinds: dict[str, str | None] = {}
    stats: dict[str, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        pid = stat.parent.name
        if pid == str(os.getpid()):
            continue
        try:
            kinds[pid] = _kind(stat.parent)
            stats[pid] = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    used: dict[str, float] = defaultdict(float)
    for pid, fields in stats.items():
        kind = kinds[pid] or kinds.get(fields[1])  # fields[1]: the parent's PID
        if kind is not None:  # utime + stime + the same of exited children (PostgreSQL backends)
            used[kind] += sum(int(f) for f in fields[11:15]) / tick
    mine = os.times()
    used["flow process"] = mine.user + mine.system
    used["istioctl stand-in (children)"] = mine.children_user + mine.children_system
    return used


async def print_timeline(parent_id: UUID, title: str) -> None:
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
    print(f"\ntimeline of {title} (start offset, duration)")
    for start, label, seconds in sorted(r for r in rows if r[0]):
        print(f"  +{(start - t0).total_seconds():6.2f} s {seconds:6.2f} s  {label}")


async def _load_flow_names() -> None:
    async with get_client() as client:
        for f in await client.read_flows():
            _FLOW_NAMES[f.id] = f.name


def reset_clusters(clusters: list[kube.LocalCluster]) -> None:
    """Remove what an install made, so the next round starts from empty clusters."""
    from kubernetes import config

    from tasks.kube_client import request_json

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


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="install_mesh: 1 vs 4 clusters in parallel vs one after another.",
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        action="append",
        help="the Prefect server's database (default: both, one round each)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="alternating 1- and 4-cluster runs; medians are compared",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="print the task runs of the last 1- and 4-cluster runs",
    )
    parser.add_argument("--cpu", action="store_true", help="CPU seconds per process kind")
    parser.add_argument(
        "--ca-key-size",
        type=int,
        choices=[2048, 3072, 4096],
        default=PkiSettings().ca_key_size,
        help="diagnostic: Istio's CA keys are RSA 4096 (docs/runbook.md, step 02)",
    )
    parser.add_argument(
        "--keys-on-demand",
        action="store_true",
        help="diagnostic: the emulator makes Key Vault's keys during the runs, on this "
        "machine's cores (by default they are made ahead and cost their latency only)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


async def run_all(
    emulator: EmulatorAdmin,
    sets: dict[str, list[kube.LocalCluster]],
    database: str,
    args: argparse.Namespace,
) -> None:
    """Measure the runs on one database and print the table.

    After one untimed 1-cluster and 4-cluster install, the 1-cluster and 4-cluster first
    installs alternate ``--repeat`` times (from empty clusters and vault each time) and the
    medians are compared: single runs on a shared 2-core machine vary by about 20%.
    """
    # Diagnostic: --ca-key-size 2048 shows how much RSA-4096 generation on 2 cores costs.
    pki = PkiSettings(ca_key_size=args.ca_key_size)
    specs = {
        name: env.wire_environment(emulator, cl, environment=name, pki=pki)
        for name, cl in sets.items()
    }
    ones: list[float] = []
    fours: list[tuple[float, UUID]] = []
    single_id = None
    key_seconds: list[float] = []
    on_demand = emulator.keys_made_on_demand()

    def prepare(spec: MeshSpec) -> None:
        # One set of 4 control planes serves every run, emptied before each first install:
        # idle control planes would take CPU (about 0.07 CPU-s/s each) from the run measured.
        reset_clusters(sets["four"])
        reset_vault(emulator, specs)
        if not args.keys_on_demand:
            key_seconds.extend(make_keys_ahead(emulator, spec).get(pki.ca_key_size, []))

    # Untimed: a control plane's first minute after start (CRD schemas, controllers syncing)
    # and this process's first flow run (imports, clients) would slow whichever run came first.
    for spec in (specs["one"], specs["four"]):
        prepare(spec)
        await timed(install_mesh, spec, cpu=False)
    key_seconds.clear()
    for _ in range(args.repeat):
        prepare(specs["one"])
        wall, single_id = await timed(install_mesh, specs["one"], cpu=args.cpu)
        ones.append(wall)
        prepare(specs["four"])
        fours.append(await timed(install_mesh, specs["four"], cpu=args.cpu))
    prepare(specs["seq"])
    seq, _ = await timed(install_mesh_sequential, specs["seq"], cpu=args.cpu)
    rerun, _ = await timed(install_mesh, specs["seq"], cpu=args.cpu)
    from prefect.events.worker import EventsWorker

    await asyncio.to_thread(EventsWorker.drain_all, 60)  # deliver queued task-run events
    await _load_flow_names()
    paths = [await critical_path(run_id) for _, run_id in fours]
    if args.timeline and single_id is not None:
        await print_timeline(single_id, "the last 1-cluster run")
        await print_timeline(fours[-1][1], "the last 4-cluster parallel run")

    one = statistics.median(ones)
    four = statistics.median(w for w, _ in fours)
    critical_ratios = [w / sum(p.values()) for (w, _), p in zip(fours, paths, strict=True)]
    median_path = {k: statistics.median(p[k] for p in paths) for k in paths[0]}

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    print(f"\n== Prefect server on {database} ==")
    print("install_mesh wall time (injected latencies: ARM creds 500 ms, AKS GET 300 ms,")
    print(f"Key Vault 80 ms per call, istioctl install 4 s); medians of {args.repeat} runs; "
          f"CA keys RSA {pki.ca_key_size}")  # fmt: skip
    made_here = emulator.keys_made_on_demand() - on_demand
    if args.keys_on_demand:
        print(f"Key Vault's keys made during the runs, on this machine's cores ({made_here} keys)")
    else:
        print(f"Key Vault's keys made ahead; each creation waited as long as its key took (CA "
              f"keys: median {statistics.median(key_seconds):.2f} s, max {max(key_seconds):.2f} "
              f"s); keys made during the runs: {made_here}")  # fmt: skip
    print(f"  {'1 cluster, parallel flow':<40} {one:7.2f} s   ({runs(ones)})")
    print(f"  {'4 clusters, parallel flow':<40} {four:7.2f} s   ({runs([w for w, _ in fours])})")
    print(f"  {'4 clusters, one after another':<40} {seq:7.2f} s")
    print(f"  {'4 clusters, re-run, nothing changed':<40} {rerun:7.2f} s")
    print(f"  {'4 clusters, critical path (task work)':<40} {sum(median_path.values()):7.2f} s")
    for part, seconds in median_path.items():
        print(f"      {part:<44} {seconds:7.2f} s")
    print("\nratios")
    print(f"  4 clusters / 1 cluster (parallel)       {four / one:5.2f}x   target <= 1.30")
    print(
        f"  4 clusters wall / critical path         {statistics.median(critical_ratios):5.2f}x"
        f"   target <= 1.15   ({runs(critical_ratios)})"
    )
    print(f"  one-after-another / parallel            {seq / four:5.2f}x")
    print(f"  first run / re-run (4 clusters)         {seq / rerun:5.2f}x")


def main() -> None:
    """Start everything, measure on each database, stop everything."""
    args = parse_args()
    # SIGTERM (a CI timeout, `kill`) becomes SystemExit so the clean-up below still runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("MESHFLOW_ISTIOCTL", str(ISTIOCTL_STANDIN))
    os.environ["MESHFLOW_STANDIN_INSTALL_SECONDS"] = "4"
    root = Path(tempfile.mkdtemp(prefix="meshflow-bench-"))
    pg_dirs: list[Path] = []
    try:
        print("starting 4 control planes, the Azure emulator and a Prefect server ...")
        clusters = kube.start_clusters(["p1", "p2", "p3", "p4"], root / "k")
        sets = {"one": clusters[:1], "four": clusters, "seq": clusters}
        databases = args.database or ["sqlite", "postgres"]
        # A separate process, like Azure: its work must not compete with the flow's threads.
        emulator = start_emulator_process(
            root / "azure", marker=str(root), config={"pending_polls": 0}
        )
        inject_latencies(emulator)
        for database in databases:
            pg = postgres.start(marker=str(root)) if database == "postgres" else None
            if pg:
                pg_dirs.append(pg.directory)  # outside root: the postgres user must reach it
            server = start_prefect_server(
                root / f"prefect-{database}", marker=str(root),
                database_url=pg.url if pg else None,
            )  # fmt: skip
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                asyncio.run(run_all(emulator, sets, database, args))
            processes.stop([(server.pid, str(root))])
            if pg:
                processes.stop([(pg.pid, str(root))])
    finally:
        processes.stop(processes.running_under(str(root)))
        for directory in pg_dirs:  # also after a failed run: no database left on disk
            postgres.remove(directory)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
