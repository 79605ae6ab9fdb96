"""The verify flow: prove the wiring end to end before touching anything.

For each cluster, in parallel: load its block, fetch its kubeconfig through the AKS API, list
namespaces. Once: write and read a probe secret in Key Vault. Read-only on the clusters.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from meshflow.spec import MeshSpec
from tasks.aks import get_cluster_credentials
from tasks.keyvault import ProbeResult, probe_key_vault
from tasks.kube import list_namespaces


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


@flow(name="verify-access", log_prints=False)
def verify_access(spec: MeshSpec) -> AccessReport:
    """Check that every cluster and the Key Vault of ``spec`` are reachable with their blocks."""
    logger = get_run_logger()
    creds = {c.name: get_cluster_credentials.submit(c.aks_block) for c in spec.clusters}
    namespaces = {
        c.name: list_namespaces.submit(c.aks_block, wait_for=[creds[c.name]], return_state=False)
        for c in spec.clusters
    }
    probe = probe_key_vault.submit(spec.key_vault_block)
    report = AccessReport(
        environment=spec.environment,
        clusters=tuple(
            ClusterAccessReport(
                cluster=c.name,
                server=creds[c.name].result().server,
                auth=creds[c.name].result().auth,
                namespaces=len(namespaces[c.name].result()),
            )
            for c in spec.clusters
        ),
        key_vault=probe.result(),
    )
    create_markdown_artifact(report.markdown(), key=f"access-{spec.environment}")
    logger.info("verified %d clusters and Key Vault %s", len(spec.clusters), report.key_vault.vault)
    return report
