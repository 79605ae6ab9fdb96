"""``meshflow deploy`` and ``meshflow env init`` against a real Prefect server, as a user runs them.

Deploying registers every deployment of the environment with its schedules, parameters and
limits (read back through the API); deploying again changes nothing. Saving the environment's
blocks takes the secret from the environment only, updates in place, and refuses bad input
with one line before writing anything.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

from blocks import AksCluster, AzureCredentials, KeyVault
from deployments.environment import blocks_file
from deployments.render import FLOWS, load_environments
from sandbox.prefect_server import PrefectServer

CLIENT_SECRET = "env-init-test-secret-0123456789abcdef"


def _cli(server: PrefectServer, tmp_path: Path, *args: str, **env: str) -> Any:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    environ |= {"PREFECT_API_URL": server.api_url, "XDG_STATE_HOME": str(tmp_path)} | env
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=environ, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=300, check=False,
    )  # fmt: skip


async def _deployments(tag: str) -> dict[str, Any]:
    async with get_client() as client:
        found = await client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[tag]))
        )
        return {d.name: (d, await client.read_deployment_schedules(d.id)) for d in found}


def test_deploy_registers_every_deployment_of_the_environment_and_again_changes_nothing(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    first = _cli(prefect_server, tmp_path, "deploy", "--env", "dev")
    assert first.returncode == 0, first.stderr
    assert "work pool meshflow-dev: created" in first.stdout
    assert "prefect worker start --pool meshflow-dev" in first.stdout
    registered = asyncio.run(_deployments("dev"))
    assert set(registered) == {f"{f.name}-dev" for f in FLOWS}
    spec = load_environments()["dev"]
    for f in FLOWS:
        d, schedules = registered[f"{f.name}-dev"]
        assert d.work_pool_name == "meshflow-dev"
        assert d.enforce_parameter_schema
        assert d.parameters["spec"] == spec.model_dump(mode="json", exclude_none=True)
        # the crash automation (90 s) relies on heartbeats every 30 s (Prefect's default: 180 s)
        assert d.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        assert [(s.schedule.cron, s.active) for s in schedules] == (
            [(f.cron, True)] if f.cron else []
        )
        limit = d.global_concurrency_limit
        if f.collision:
            assert limit is not None
            assert limit.limit == 1
            assert d.concurrency_options is not None
            assert d.concurrency_options.collision_strategy.value == f.collision
        else:
            assert limit is None  # install-cluster: one run per cluster at once
        assert d.parameter_openapi_schema["required"][0] == "spec"
    assert registered["install-cluster-dev"][0].parameters["cluster"] == spec.clusters[0].name

    again = _cli(prefect_server, tmp_path, "deploy", "--env", "dev")
    assert again.returncode == 0, again.stderr
    assert "work pool meshflow-dev: exists" in again.stdout
    assert again.stdout.count(" unchanged") == len(FLOWS) + 2
    assert "automation meshflow-crashed-runs-dev: unchanged" in again.stdout
    assert "automation meshflow-unstarted-runs-dev: unchanged" in again.stdout
    after = asyncio.run(_deployments("dev"))
    assert {n: d.updated for n, (d, _) in after.items()} == {
        n: d.updated for n, (d, _) in registered.items()
    }
    assert {n: [s.id for s in ss] for n, (_, ss) in after.items()} == {
        n: [s.id for s in ss] for n, (_, ss) in registered.items()
    }


def test_env_init_saves_the_blocks_from_the_file_and_the_secret_from_the_environment(
    prefect_server: PrefectServer, tmp_path: Path
) -> None:
    first = _cli(prefect_server, tmp_path, "env", "init", "staging",
                 AZURE_CLIENT_SECRET=CLIENT_SECRET)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert CLIENT_SECRET not in first.stdout + first.stderr
    spec = load_environments()["staging"]
    names = [spec.credentials_block, *(c.aks_block for c in spec.clusters)]
    assert all(f" {n} " in first.stdout for n in names)
    creds = AzureCredentials.load(spec.credentials_block, _sync=True)  # type: ignore[call-arg]
    assert creds.client_secret is not None
    assert creds.client_secret.get_secret_value() == CLIENT_SECRET
    vault = KeyVault.load(spec.key_vault_block, _sync=True)  # type: ignore[call-arg]
    assert vault.vault_name == "kv-mesh-staging"
    aks = AksCluster.load(spec.clusters[1].aks_block, _sync=True)  # type: ignore[call-arg]
    assert (aks.cluster_name, aks.region) == (spec.clusters[1].name, "eastus2")

    again = _cli(prefect_server, tmp_path, "env", "init", "staging",
                 AZURE_CLIENT_SECRET=CLIENT_SECRET + "-new")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout
    assert again.stdout.count(" updated") == 2 + len(spec.clusters)
    creds = AzureCredentials.load(spec.credentials_block, _sync=True)  # type: ignore[call-arg]
    assert creds.client_secret is not None
    assert creds.client_secret.get_secret_value() == CLIENT_SECRET + "-new"


async def _block_names() -> set[str]:
    async with get_client() as client:
        return {d.name for d in await client.read_block_documents() if d.name}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-secret", "error: AZURE_CLIENT_SECRET is not set: export it"),
        ("malformed", "clusters.dev-westeurope-aks-1.region: Field required"),
        ("unknown-cluster", "clusters: 'dev-eastus-aks-9' is not a cluster of mesh dev"),
        ("unknown-environment", "error: no environment 'qa'; known: dev, prod, staging, sandbox"),
    ],
)
def test_env_init_refuses_bad_input_with_one_line_before_any_write(
    prefect_server: PrefectServer, tmp_path: Path, case: str, expected: str
) -> None:
    text = blocks_file("dev").read_text()
    broken = tmp_path / "dev.yaml"
    if case == "malformed":
        text = text.replace("    region: westeurope\n", "", 1)
    if case == "unknown-cluster":
        text += (
            "  dev-eastus-aks-9:\n    subscription_id: s\n    resource_group: r\n"
            "    cluster_name: dev-eastus-aks-9\n    region: eastus\n"
        )
    broken.write_text(text)
    secret = {} if case == "no-secret" else {"AZURE_CLIENT_SECRET": CLIENT_SECRET}
    before = asyncio.run(_block_names())
    env = "qa" if case == "unknown-environment" else "dev"
    result = _cli(prefect_server, tmp_path, "env", "init", env, "--file", str(broken), **secret)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert asyncio.run(_block_names()) == before
