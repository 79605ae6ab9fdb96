"""How far apart the ``install-cluster`` sub-flows of one install start, per Prefect database.

Starts a sandbox as a user does (``meshflow sandbox up --clusters N``, in a temporary folder),
runs ``meshflow install --env sandbox`` once, and reads the start times of that run's
``install-cluster-<c>`` sub-flows from the Prefect API; then the same with the other database,
and prints both spreads side by side. On SQLite the server answers concurrent flow-run state
writes with "database is locked" and its client backs off, so the fan-out starts spread out;
on PostgreSQL (the sandbox's default) together.

Usage: ``.venv/bin/python benchmarks/subflow_starts.py [--clusters 4] [--database both]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.settings import PREFECT_API_URL, temporary_settings


def _meshflow(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"meshflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def spread(database: str, clusters: int) -> list[float]:
    """Seconds after the first, at which each sub-flow of one install started."""
    with tempfile.TemporaryDirectory(prefix="meshflow-starts-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["MESHFLOW_SANDBOX_DIR"] = str(Path(tmp) / "sandbox")
        try:
            _meshflow(env, "sandbox", "up", "--clusters", str(clusters), "--database", database)
            _meshflow(env, "install", "--env", "sandbox")
            status = json.loads(_meshflow(env, "sandbox", "status", "--json"))
            with temporary_settings(updates={PREFECT_API_URL: status["prefect_api_url"]}):
                starts = _subflow_starts()
        finally:
            _meshflow(env, "sandbox", "down")
    first = min(starts)
    return sorted((s - first).total_seconds() for s in starts)


def _subflow_starts() -> list[datetime]:
    with get_client(sync_client=True) as client:
        (parent,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["install-mesh"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])
            )
        )
    return [
        c.start_time for c in children if c.name.startswith("install-cluster-") and c.start_time
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--database", choices=["postgres", "sqlite", "both"], default="both")
    args = parser.parse_args()
    databases = ["postgres", "sqlite"] if args.database == "both" else [args.database]
    results = {db: spread(db, args.clusters) for db in databases}
    print(f"install-cluster sub-flow starts, {args.clusters} clusters, one install each")
    for db, offsets in results.items():
        shown = ", ".join(f"+{o:.2f}" for o in offsets)
        print(f"  {db:<9} first to last {offsets[-1]:5.2f} s   ({shown} s)")
    if len(results) == 2 and results["postgres"][-1] > 0:
        ratio = results["sqlite"][-1] / results["postgres"][-1]
        print(f"  sqlite / postgres spread: {ratio:.1f}x")


if __name__ == "__main__":
    main()
