"""The mesh PKI flow: root CA, one intermediate per cluster (in parallel), ingress certificates.

Idempotent end to end: a second run reads everything and writes nothing (see :mod:`tasks.pki`).
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict

from meshflow.spec import MeshSpec
from tasks.keyvault import ObjectRef
from tasks.pki import (
    ensure_frontend_certificate,
    ensure_ingress_certificate,
    ensure_intermediate_ca,
    ensure_root_ca,
)


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


@flow(name="ensure-mesh-pki")
def ensure_mesh_pki(spec: MeshSpec) -> PkiReport:
    """Ensure the root CA, each cluster's intermediate and the ingress certificates in Key Vault."""
    kv, root_kv, settings = spec.key_vault_block, spec.root_key_vault_block, spec.pki
    names = [c.name for c in spec.clusters]
    root = ensure_root_ca.submit(kv, names, settings, root_kv)
    intermediates = [
        ensure_intermediate_ca.submit(
            kv, name, settings, root_kv, wait_for=[root], return_state=False
        )
        for name in names
    ]
    ingress = ensure_ingress_certificate.submit(
        kv, settings, root_kv, wait_for=[root], return_state=False
    )
    frontend = ensure_frontend_certificate.submit(kv, settings, spec.frontend_pfx_block)
    objects = [*root.result()]
    for future in intermediates:
        objects += future.result()
    objects += [ingress.result(), frontend.result()]
    report = PkiReport(environment=spec.environment, objects=tuple(objects))
    create_table_artifact(
        report.table(dt.datetime.now(dt.UTC)),
        key=f"mesh-pki-{spec.environment}",
        description=f"Mesh PKI objects in Key Vault ({spec.environment})",
    )
    get_run_logger().info(
        "mesh PKI ensured: %d objects, %d new versions", len(objects), len(report.written)
    )
    return report
