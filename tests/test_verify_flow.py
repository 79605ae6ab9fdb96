"""The walking skeleton end to end: blocks → ARM → kubeconfig → API servers, and Key Vault."""

from __future__ import annotations

import asyncio

from prefect.client.orchestration import get_client

from flows.verify import verify_access
from meshflow.spec import MeshSpec
from sandbox.azure import AzureEmulator
from tasks.aks import forget_credentials


def test_verify_access_reaches_every_cluster_and_the_vault(
    mesh_env: MeshSpec, emulator: AzureEmulator
) -> None:
    forget_credentials()
    report = asyncio.run(verify_access(mesh_env))
    assert [c.cluster for c in report.clusters] == [c.name for c in mesh_env.clusters]
    for cluster in report.clusters:
        assert cluster.server.startswith("https://127.0.0.1:")
        assert cluster.auth == "token"
        assert cluster.namespaces >= 4  # default, kube-system, kube-public, kube-node-lease
    assert report.key_vault.secret == "meshflow-probe"
    paths = [(r["method"], r["path"]) for r in emulator.requests_log()]
    for cluster in mesh_env.clusters:
        assert any(
            m == "POST"
            and p.endswith(f"/managedClusters/{cluster.name}/listClusterAdminCredential")
            for m, p in paths
        )
    assert ("PUT", "/secrets/meshflow-probe") in paths


def test_verify_access_publishes_an_artifact(mesh_env: MeshSpec) -> None:
    asyncio.run(verify_access(mesh_env))

    async def latest() -> str:
        async with get_client() as client:
            artifact = await client.read_latest_artifacts()
            return "\n".join(str(a.data) for a in artifact if a.key == "access-e2e")

    text = asyncio.run(latest())
    assert "| alpha |" in text
    assert "| bravo |" in text
