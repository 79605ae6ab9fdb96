"""Bad input gets one clear line per problem, a non-zero exit, and no write anywhere.

Runs the ``meshflow`` command as a user does, against the session's control planes, Azure
emulator and Prefect server; the vault is emptied first, so "nothing is written" also holds
where the first thing a run would do is create the mesh's PKI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshflow.spec import MeshSpec
from sandbox import kube
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer
from tasks.pki import ROOT_CERT_OBJECT, ROOT_KEY
from tests.writes import cluster_writes, vault_writes

pytestmark = pytest.mark.e2e


@pytest.fixture
def run_cli(tmp_path: Path, prefect_server: PrefectServer) -> Any:
    envs = tmp_path / "environments"
    envs.mkdir()

    def run(*args: str, spec: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        if spec is not None:
            (envs / f"{spec['environment']}.yaml").write_text(yaml.safe_dump(spec))
        env = {
            **os.environ,
            "PREFECT_API_URL": prefect_server.api_url,
            "MESHFLOW_ENVIRONMENTS_DIR": str(envs),
            "XDG_STATE_HOME": str(tmp_path / "state"),
        }
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
            env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    return run


@pytest.fixture
def fresh_vault(mesh_env: MeshSpec, emulator: AzureEmulator) -> MeshSpec:
    emulator.drop_key(ROOT_KEY)
    for name in (
        ROOT_CERT_OBJECT,
        "root-cert",
        "echoserver",
        "frontend-certificate",
        *(f"{c.name}-{k}" for c in mesh_env.clusters for k in ("ca-cert", "cert-chain")),
    ):
        emulator.drop_certificate(name)
        emulator.drop_secret(name)  # fmt: skip
    emulator.clear_log()
    return mesh_env


def _spec(mesh: MeshSpec, environment: str, **changes: Any) -> dict[str, Any]:
    data = mesh.model_dump(mode="json", exclude_none=True) | {"environment": environment}
    return data | changes


def _writes(emulator: AzureEmulator, clusters: list[kube.LocalCluster]) -> tuple[int, int]:
    return len(vault_writes(emulator)), len(cluster_writes(clusters))


def _errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The command's error lines; beside them, only Prefect's progress lines (never a failure
    record or a traceback: the command reports the failure once, itself)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert not [line for line in lines if "| ERROR " in line], result.stderr
    return [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]


def test_a_bad_mesh_file_is_one_line_per_problem_with_file_and_field(
    run_cli: Any, fresh_vault: MeshSpec, emulator: AzureEmulator,
    kube_clusters: list[kube.LocalCluster], tmp_path: Path,
) -> None:  # fmt: skip
    before = _writes(emulator, kube_clusters)
    clusters = [{"name": "One", "aks_block": "x"}, {"name": "two", "aks_block": "y", "colour": 1}]
    spec = _spec(fresh_vault, "bad", clusters=clusters, istio_version="9.99.0")
    errors = _errors(run_cli("install", "--env", "bad", spec=spec))
    path = tmp_path / "environments" / "bad.yaml"
    assert errors == [
        f"{path}: clusters[0].name: String should match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        f"{path}: clusters[1].colour: Extra inputs are not permitted",
    ]
    version = _errors(
        run_cli("install", "--env", "v", spec=_spec(fresh_vault, "v", istio_version="9.99.0"))
    )
    assert version == [
        f"{tmp_path / 'environments' / 'v.yaml'}: the mesh: istio_version '9.99.0' is not a "
        "release meshflow knows (known: 1.27.3)"
    ]
    assert _writes(emulator, kube_clusters) == before == (0, before[1])


def test_missing_or_mistyped_blocks_are_named_before_any_write_on_a_fresh_vault(
    run_cli: Any, fresh_vault: MeshSpec, emulator: AzureEmulator,
    kube_clusters: list[kube.LocalCluster], prefect_server: PrefectServer,
) -> None:  # fmt: skip
    before = _writes(emulator, kube_clusters)
    clusters = [
        {"name": "alpha", "aks_block": "e2e-no-such-cluster"},
        {"name": "bravo", "aks_block": fresh_vault.key_vault_block},  # a Key Vault block
    ]
    errors = _errors(
        run_cli("install", "--env", "nob", spec=_spec(fresh_vault, "nob", clusters=clusters))
    )
    assert errors == [
        f"Prefect block 'e2e-no-such-cluster' of type 'Meshflow AKS Cluster' does not exist on "
        f"{prefect_server.api_url}; save the environment's blocks with `meshflow env init "
        "<environment>`, create it in the Prefect UI (Blocks, +, Meshflow AKS Cluster), or for "
        "the sandbox run `meshflow sandbox up`",
        f"Prefect block {fresh_vault.key_vault_block!r} is a 'Meshflow Azure Credentials' and a "
        "'Meshflow Key Vault' block, not a 'Meshflow AKS Cluster'; point the mesh description "
        "at a 'Meshflow AKS Cluster' block, or save one under that name",
    ]
    assert _writes(emulator, kube_clusters) == before == (0, before[1])


def test_an_unknown_environment_is_one_line_and_debug_shows_the_traceback(
    run_cli: Any, fresh_vault: MeshSpec
) -> None:
    (error,) = _errors(run_cli("install", "--env", "nowhere"))
    assert error.startswith("no environment 'nowhere'; known: ")
    spec = _spec(fresh_vault, "dbg", istio_version="9.99.0")
    debug = run_cli("--debug", "install", "--env", "dbg", spec=spec)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert "InvalidError" in debug.stderr
