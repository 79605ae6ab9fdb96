"""The verify flow: prove the wiring end to end before touching anything.

For each cluster, concurrently: load its block, fetch its kubeconfig through the AKS API, list
namespaces. Once: write and read a probe secret in Key Vault. Read-only on the clusters.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from pydantic import BaseModel, ConfigDict

from flows.runs import FLOW_OPTIONS, required_blocks
from meshflow.spec import ClusterSpec, MeshSpec
from tasks.aks import get_cluster_credentials
from tasks.keyvault import ProbeResult, probe_key_vault
from tasks.kube import list_namespaces
from tasks.preflight import check_blocks


class ClusterAccessReport(BaseModel):
    """What verify learned about one cluster."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    server: str
    auth: str
    namespaces: int


class AccessReport(BaseModel):
    """What verify learned, as returned by the flow and shown in its artifact."""

    model_config = ConfigDict(frozen=True)
    environment: str
    clusters: tuple[ClusterAccessReport, ...]
    key_vault: ProbeResult

    def markdown(self) -> str:
        """The report as a Markdown table."""
        kv = self.key_vault
        rows = "\n".join(
            f"| {c.cluster} | {c.server} | {c.auth} | {c.namespaces} |" for c in self.clusters
        )
        return (
            f"# Access verified: {self.environment}\n\n"
            "| cluster | API server | auth | namespaces |\n|---|---|---|---|\n"
            f"{rows}\n\nKey Vault `{kv.vault}`: wrote and read `{kv.secret}` "
            f"(version {kv.version}) in {kv.round_trip_ms} ms.\n"
        )


async def _check_cluster(cluster: ClusterSpec) -> ClusterAccessReport:
    creds = await get_cluster_credentials(cluster)
    names = await list_namespaces(cluster)
    return ClusterAccessReport(
        cluster=cluster.name, server=creds.server, auth=creds.auth, namespaces=len(names)
    )


@flow(name="verify-access", **FLOW_OPTIONS)
async def verify_access(spec: MeshSpec) -> AccessReport:
    """Check that every cluster and the Key Vault of ``spec`` are reachable with their blocks."""
    await check_blocks(required_blocks(spec))
    clusters, probe = await asyncio.gather(
        asyncio.gather(*(_check_cluster(c) for c in spec.clusters)),
        probe_key_vault(spec.key_vault_block),
    )
    report = AccessReport(environment=spec.environment, clusters=tuple(clusters), key_vault=probe)
    await acreate_markdown_artifact(report.markdown(), key=f"access-{spec.environment}")
    get_run_logger().info("verified %d clusters and Key Vault %s", len(clusters), probe.vault)
    return report
