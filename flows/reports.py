"""What the flows return and publish: references and outcomes, never a secret.

Each report is a frozen model (a flow's result in the Prefect UI) with the Markdown or table its
artifact shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from prefect import get_run_logger
from prefect.artifacts import acreate_table_artifact
from pydantic import BaseModel, ConfigDict

from tasks.istio import IstioInstall
from tasks.keyvault import ObjectRef
from tasks.kube import Applied, DataPlaneCheck, RemoteAccess


class PkiReport(BaseModel):
    """References to every PKI object of the mesh: names, versions, expiry; never a key."""

    model_config = ConfigDict(frozen=True)
    environment: str
    objects: tuple[ObjectRef, ...]

    @property
    def written(self) -> list[ObjectRef]:
        """The objects this run created a new version of."""
        return [o for o in self.objects if o.written]

    def table(self, now: dt.datetime) -> list[dict[str, object]]:
        """Rows for the Prefect table artifact."""
        return [
            {
                "object": f"{o.kind} {o.name}",
                "version": o.version,
                "written": "new version" if o.written else "unchanged",
                "subject": o.subject or "",
                "not_after": o.not_after.date().isoformat() if o.not_after else "",
                "days_left": (o.not_after - now).days if o.not_after else "",
            }
            for o in self.objects
        ]


async def publish_pki_report(report: PkiReport) -> None:
    """The PKI table artifact (``mesh-pki-<env>``) and a one-line log: names and expiry only."""
    await acreate_table_artifact(
        report.table(dt.datetime.now(dt.UTC)),
        key=f"mesh-pki-{report.environment}",
        description=f"Mesh PKI objects in Key Vault ({report.environment})",
    )
    get_run_logger().info(
        "mesh PKI ensured: %d objects, %d new versions", len(report.objects), len(report.written)
    )


class ClusterInstall(BaseModel):
    """What the per-cluster sub-flow did."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    server: str
    ca: tuple[ObjectRef, ...]
    istio: IstioInstall
    applied: tuple[Applied, ...]

    @property
    def writes(self) -> int:
        """Objects created or updated, its CA's Key Vault versions included (0 when converged)."""
        return (
            sum(o.written for o in self.ca)
            + sum(a.action != "unchanged" for a in self.applied)
            + (self.istio.action != "unchanged")
        )


class MeshReport(BaseModel):
    """The mesh after ``install-mesh``: per cluster, per remote secret, and what was not run."""

    model_config = ConfigDict(frozen=True)
    environment: str
    revision: str
    shared_pki: tuple[ObjectRef, ...]  # root, root-cert, ingress certificates (not per cluster)
    clusters: tuple[ClusterInstall, ...]
    remote_secrets: tuple[Applied, ...]
    access: tuple[RemoteAccess, ...]
    data_plane: tuple[DataPlaneCheck, ...]

    @property
    def writes(self) -> int:
        """Everything this run created or updated, PKI included."""
        return (
            sum(o.written for o in self.shared_pki)
            + sum(c.writes for c in self.clusters)
            + sum(s.action != "unchanged" for s in self.remote_secrets)
        )

    @property
    def ok(self) -> bool:
        """Control plane verified and no data-plane check failed (not-run is not failure)."""
        return all(a.read_ok for a in self.access) and all(
            d.status != "failed" for d in self.data_plane
        )

    @property
    def pki(self) -> PkiReport:
        """Every PKI object of the mesh: the shared ones and each cluster's CA."""
        per_cluster = (ref for c in self.clusters for ref in c.ca)
        return PkiReport(environment=self.environment, objects=(*self.shared_pki, *per_cluster))

    def readable_into(self, cluster: str) -> int:
        """How many remote secrets stored in ``cluster`` reach their source with reader rights."""
        return sum(a.read_ok for a in self.access if a.target == cluster)

    def markdown(self) -> str:
        """The mesh as a table: per cluster the revision, remote secrets, reader access, sync."""
        peers = len(self.clusters) - 1
        rows = []
        for c in self.clusters:
            present = sum(a.present for a in self.access if a.target == c.cluster)
            readable = self.readable_into(c.cluster)
            sync = _status(self.data_plane, c.cluster, "istiod sync")
            rows.append(
                f"| {c.cluster} | {c.istio.revision} ({c.istio.action}) | {present}/{peers} "
                f"| {readable}/{peers} | {sync} |"
            )
        not_run = [d for d in self.data_plane if d.status == "not run"]
        notes = "\n".join(f"- {d.check} on {d.cluster}: not run: {d.detail}" for d in not_run)
        others = "\n".join(
            f"- {c.cluster}: istiod of revision {', '.join(c.istio.other_revisions)} is also "
            "installed (meshflow leaves it alone; remove it with `istioctl uninstall --revision`"
            " once nothing uses it)"
            for c in self.clusters
            if c.istio.other_revisions
        )
        return (
            f"# Mesh {self.environment}: {'OK' if self.ok else 'PROBLEMS'}\n\n"
            "| cluster | Istio revision | remote secrets | reader access | istiod sync |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"Writes this run: {self.writes} (0 means nothing had changed).\n\n"
            + (f"## Not run\n{notes}\n" if notes else "")
            + (f"## Other Istio revisions\n{others}\n" if others else "")
        )


def _status(checks: Iterable[DataPlaneCheck], cluster: str, check: str) -> str:
    for d in checks:
        if d.cluster == cluster and d.check == check:
            return d.status if d.status != "not run" else f"not run: {d.detail}"
    return "-"
