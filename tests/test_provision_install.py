"""install_mesh's first stage: the mesh's Terraform module, with the real binary on infra/sandbox.

``provision: plan`` stops the run after the plan, before any write to Key Vault or a cluster;
``apply`` applies, then the install goes on, and the next run plans no change; a cluster of
the mesh that the outputs do not have stops the run before any write. ``meshflow env init
--from-terraform`` saves the vault's and the clusters' blocks from the outputs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from blocks import AksCluster, KeyVault
from flows.install import install_mesh
from meshflow.errors import InvalidError
from meshflow.spec import ClusterSpec, MeshSpec
from sandbox import kube
from sandbox import terraform as sandbox_terraform
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer
from tests.writes import cluster_writes, vault_writes

pytestmark = [pytest.mark.e2e, pytest.mark.terraform]


def _with_module(mesh: MeshSpec, root: Path, clusters: list[kube.LocalCluster], **kw: Any) -> Any:
    urls = {c.name: c.api_url for c in clusters}
    vault = KeyVault.load(mesh.key_vault_block, _sync=True)  # type: ignore[call-arg]
    settings = sandbox_terraform.write_terraform_inputs(root, urls, vault.url)
    return mesh.model_copy(update={"terraform": settings, **kw})


def _writes(emulator: AzureEmulator, clusters: list[kube.LocalCluster]) -> list[str]:
    """Key Vault writes and the clusters' writes since the emulator's log was cleared."""
    return vault_writes(emulator) + cluster_writes(clusters)


def test_plan_stops_the_install_before_any_write_then_apply_goes_on_and_converges(
    installed_mesh: Any,
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
    azure_emulator: AzureEmulator,
    tmp_path: Path,
) -> None:
    planned = _with_module(mesh_env, tmp_path, kube_clusters, provision="plan")
    azure_emulator.clear_log()
    before = _writes(azure_emulator, kube_clusters)
    report = asyncio.run(install_mesh(planned))
    assert report.stopped
    assert report.infrastructure is not None
    assert report.infrastructure.startswith("infrastructure infra/sandbox: planned (")
    assert report.clusters == ()
    assert _writes(azure_emulator, kube_clusters) == before
    assert not (tmp_path / "terraform.tfstate").exists()  # nothing applied

    applied = planned.model_copy(update={"provision": "apply"})
    first = asyncio.run(install_mesh(applied))
    assert (
        first.infrastructure
        == "infrastructure infra/sandbox: applied (5 to add, 0 to change, 0 to destroy)"
    )
    assert {c.cluster for c in first.clusters} == set(mesh_env.cluster_names)
    again = asyncio.run(install_mesh(applied))
    assert again.infrastructure == "infrastructure infra/sandbox: no changes"
    assert again.writes == 0


def test_a_cluster_missing_from_the_outputs_stops_the_install_before_any_write(
    installed_mesh: Any,
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
    azure_emulator: AzureEmulator,
    tmp_path: Path,
) -> None:
    only_first = _with_module(mesh_env, tmp_path, kube_clusters[:1], provision="apply")
    azure_emulator.clear_log()
    before = _writes(azure_emulator, kube_clusters)
    with pytest.raises(InvalidError) as failed:
        asyncio.run(install_mesh(only_first))
    second = mesh_env.clusters[1].name
    assert str(failed.value) == (
        f"cluster {second!r} is in the mesh description but not in the outputs of infra/sandbox; "
        "add it to the module's clusters variable (its .tfvars), or remove it from the mesh"
    )
    assert _writes(azure_emulator, kube_clusters) == before


def test_env_init_from_terraform_saves_the_vault_and_clusters_from_the_outputs(
    mesh_env: MeshSpec,
    kube_clusters: list[kube.LocalCluster],
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    envs = tmp_path / "environments"
    envs.mkdir()
    spec = _with_module(mesh_env, tmp_path, kube_clusters, provision="apply").model_copy(
        update={
            "environment": "fromtf",
            "credentials_block": "fromtf",
            "key_vault_block": "fromtf",
            "clusters": tuple(
                ClusterSpec(name=c.name, aks_block=f"fromtf-{c.name}") for c in mesh_env.clusters
            ),
        }
    )
    (envs / "fromtf.yaml").write_text(spec.to_yaml())
    blocks = tmp_path / "fromtf.blocks.yaml"
    blocks.write_text(yaml.safe_dump({"credentials": {"auth": "default"}}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")} | {
        "PREFECT_API_URL": prefect_server.api_url,
        "MESHFLOW_ENVIRONMENTS_DIR": str(envs),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args], env=environ, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=300, check=False,
        )  # fmt: skip

    without = cli("env", "init", "fromtf", "--file", str(blocks))
    assert without.returncode == 1
    assert "key_vault: say which vault holds the mesh CA" in without.stderr
    # Before the module is applied: the credentials are saved (provisioning needs them), and
    # the command says what to do next.
    early = cli("env", "init", "fromtf", "--file", str(blocks), "--from-terraform")
    assert early.returncode == 1
    assert "provision first (`meshflow provision --env fromtf --apply`)" in early.stderr
    provisioned = cli("provision", "--env", "fromtf", "--apply")
    assert provisioned.returncode == 0, provisioned.stderr[-2000:]
    saved = cli("env", "init", "fromtf", "--file", str(blocks), "--from-terraform")
    assert saved.returncode == 0, saved.stderr[-2000:]
    vault = KeyVault.load("fromtf", _sync=True)  # type: ignore[call-arg]
    assert vault.vault_name == sandbox_terraform.VAULT_NAME
    assert vault.url == KeyVault.load(mesh_env.key_vault_block, _sync=True).url  # type: ignore[call-arg]
    for c in mesh_env.clusters:
        aks = AksCluster.load(f"fromtf-{c.name}", _sync=True)  # type: ignore[call-arg]
        assert (aks.cluster_name, aks.resource_group) == (c.name, sandbox_terraform.RESOURCE_GROUP)
