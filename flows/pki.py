"""The mesh PKI flow: root CA, one intermediate per cluster (in parallel), ingress certificates.

Idempotent end to end: a second run reads everything and writes nothing (see :mod:`tasks.pki`).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from pydantic import BaseModel, ConfigDict

from flows.runs import FLOW_OPTIONS, mesh_run, required_blocks
from meshflow.spec import MeshSpec
from tasks.keyvault import ObjectRef
from tasks.pki import (
    ensure_frontend_certificate,
    ensure_ingress_certificate,
    ensure_intermediate_ca,
    ensure_root_ca,
    request_intermediate_ca,
)
from tasks.preflight import check_blocks


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


@flow(name="ensure-mesh-pki", **FLOW_OPTIONS)
async def ensure_mesh_pki(spec: MeshSpec) -> PkiReport:
    """Ensure the root CA, each cluster's intermediate and the ingress certificates in Key Vault."""
    async with mesh_run(spec.environment):
        await check_blocks(required_blocks(spec))
        return await _ensure_pki(spec)


async def _ensure_pki(spec: MeshSpec) -> PkiReport:
    kv, root_kv, settings = spec.key_vault_block, spec.root_key_vault_block, spec.pki
    names = [c.name for c in spec.clusters]

    async def signed_by_root() -> list[ObjectRef]:
        # Key Vault generates the intermediate keys that will be needed while the root is ensured.
        root, _ = await asyncio.gather(
            ensure_root_ca(kv, names, settings, root_kv),
            asyncio.gather(*(request_intermediate_ca(kv, n, settings, root_kv) for n in names)),
        )
        intermediates, ingress = await asyncio.gather(
            asyncio.gather(*(ensure_intermediate_ca(kv, n, settings, root_kv) for n in names)),
            ensure_ingress_certificate(kv, settings, root_kv),
        )
        return [*root, *(ref for refs in intermediates for ref in refs), ingress]

    chain, frontend = await asyncio.gather(
        signed_by_root(), ensure_frontend_certificate(kv, settings, spec.frontend_pfx_block)
    )
    report = PkiReport(environment=spec.environment, objects=(*chain, frontend))
    await publish_pki_report(report)
    return report


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
