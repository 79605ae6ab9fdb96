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

from tasks.appgateway import ArmChange, GatewayEndpoint
from tasks.istio import IstioInstall
from tasks.keyvault import ObjectRef
from tasks.kube import Applied, DataPlaneCheck, RemoteAccess
from tasks.probes import ProbeResult


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
            + sum(a.written for a in self.applied)
            + (self.istio.action != "unchanged")
        )


class ClusterIngress(BaseModel):
    """What the ingress steps (12-22) did on one cluster, and what its probes found."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    host: str
    endpoint: GatewayEndpoint
    https: bool
    applied: tuple[Applied, ...]
    gateway: tuple[ArmChange, ...] = ()
    istio: IstioInstall | None = None
    probes: tuple[ProbeResult, ...] = ()
    checks: tuple[DataPlaneCheck, ...] = ()

    @property
    def writes(self) -> int:
        """Objects created or updated in the cluster and in ARM (0 when converged)."""
        return (
            sum(a.written for a in self.applied)
            + sum(g.action != "unchanged" for g in self.gateway)
            + (self.istio is not None and self.istio.action != "unchanged")
        )

    @property
    def ok(self) -> bool:
        """No probe and no check failed (not run is not a failure)."""
        return all(p.status != "failed" for p in self.probes) and all(
            c.status != "failed" for c in self.checks
        )

    @property
    def certificates(self) -> tuple[str, ...]:
        """The App Gateway certificates ``ensure-app-gateway`` read back from ARM this run."""
        done = any(g.object.endswith("certificates and identity") for g in self.gateway)
        return ("frontend-certificate", "root-certificate") if done else ()

    def line(self) -> str:
        """One console line: endpoint, probes, certificates, AGIC."""
        outcomes: dict[str, list[str]] = {}  # probes with the same outcome share one clause
        for p in self.probes:
            outcome = p.status if p.status != "not run" else p.detail  # "not run: <why>"
            scheme = "HTTPS" if p.url.startswith("https:") else "HTTP"
            outcomes.setdefault(outcome, []).append(f"{scheme} {p.expected_status}")
        probes = "; ".join(f"{', '.join(names)} {out}" for out, names in outcomes.items())
        agic = next((c for c in self.checks if c.check == "AGIC reconciled"), None)
        agic_text = "-" if agic is None else (
            agic.status if agic.status != "not run" else f"not run: {agic.detail}"
        )  # fmt: skip
        certs = ", ".join(self.certificates) or (
            "not checked this run (HTTP only)" if self.https else "none (HTTP only)"
        )
        return (
            f"{self.cluster}: {self.host} -> {self.endpoint.ip}; probes {probes or '-'}; "
            f"App Gateway certificates: {certs}; AGIC: {agic_text}"
        )

    def markdown(self) -> str:
        """The cluster's ingress section of the mesh artifact."""
        rows = "\n".join(
            f"| {p.url} | {p.expected_status} | {p.status} | {p.http_status or '-'} "
            f"| {p.server or '-'} | {p.tls} | {p.detail} |"
            for p in self.probes
        )
        checks = "\n".join(f"- {c.check}: {c.status}: {c.detail}" for c in self.checks)
        gateway = "\n".join(f"- {g.object}: {g.action}" for g in self.gateway)
        if self.certificates:
            present = ", ".join(f"`{c}`" for c in self.certificates)
            gateway = f"- certificates on the gateway: {present}\n{gateway}".rstrip()
        return (
            f"### Ingress on {self.cluster}\n\n"
            f"Endpoint: App Gateway `{self.endpoint.gateway_id.rsplit('/', 1)[-1]}`, public IP "
            f"{self.endpoint.ip}, host `{self.host}`; "
            f"{'HTTPS end to end' if self.https else 'HTTP only'}.\n\n"
            "| URL | expected | result | status | server | TLS | detail |\n"
            "|---|---|---|---|---|---|---|\n"
            + rows
            + "\n\n"
            + (f"App Gateway:\n{gateway}\n\n" if gateway else "")
            + (f"Checks:\n{checks}\n" if checks else "")
        )


class IngressReport(BaseModel):
    """The ingress clusters after ``expose-mesh``."""

    model_config = ConfigDict(frozen=True)
    environment: str
    clusters: tuple[ClusterIngress, ...]

    @property
    def writes(self) -> int:
        """Everything this run created or updated."""
        return sum(c.writes for c in self.clusters)

    @property
    def ok(self) -> bool:
        """No probe or check failed on any ingress cluster."""
        return all(c.ok for c in self.clusters)

    def markdown(self) -> str:
        """The artifact ``ingress-<env>``."""
        sections = "\n".join(c.markdown() for c in self.clusters) or "No ingress cluster.\n"
        return (
            f"# Ingress {self.environment}: {'OK' if self.ok else 'PROBLEMS'}\n\n{sections}\n"
            f"Writes this run: {self.writes}.\n"
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
    ingress: tuple[ClusterIngress, ...] = ()
    removed_secrets: tuple[Applied, ...] = ()
    """Remote secrets of clusters that left the spec, deleted from the others."""
    infrastructure: str | None = None
    """What the provisioning stage did (one line), if the mesh has a Terraform module."""
    stopped: bool = False
    """The run stopped after the Terraform plan (``provision: plan``), for review."""
    run_id: str | None = None
    """The install run's id (its page in the UI), when run as a flow."""

    @property
    def writes(self) -> int:
        """Everything this run created, updated or deleted, PKI and ingress included."""
        return (
            sum(o.written for o in self.shared_pki)
            + sum(c.writes for c in self.clusters)
            + sum(s.written for s in self.remote_secrets)
            + len(self.removed_secrets)
            + sum(i.writes for i in self.ingress)
        )

    @property
    def ok(self) -> bool:
        """Control plane verified, no data-plane check, probe or ingress check failed.

        "not run" is not a failure.
        """
        return (
            all(a.read_ok for a in self.access)
            and all(d.status != "failed" for d in self.data_plane)
            and all(i.ok for i in self.ingress)
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
        left = "\n".join(
            f"- {r.cluster}: deleted {r.object} (its source is no longer in the spec)"
            for r in self.removed_secrets
        )
        return (
            f"# Mesh {self.environment}: {'OK' if self.ok else 'PROBLEMS'}\n\n"
            "| cluster | Istio revision | remote secrets | reader access | istiod sync |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"Writes this run: {self.writes} (0 means nothing had changed).\n\n"
            + (f"Infrastructure: {self.infrastructure}.\n\n" if self.infrastructure else "")
            + (f"## Not run\n{notes}\n" if notes else "")
            + (f"## Other Istio revisions\n{others}\n" if others else "")
            + (f"## Left the mesh\n{left}\n" if left else "")
            + ("\n## Ingress\n\n" + "\n".join(i.markdown() for i in self.ingress)
               if self.ingress else "")
        )  # fmt: skip


def _status(checks: Iterable[DataPlaneCheck], cluster: str, check: str) -> str:
    for d in checks:
        if d.cluster == cluster and d.check == check:
            return d.status if d.status != "not run" else f"not run: {d.detail}"
    return "-"
