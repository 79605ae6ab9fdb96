"""The mesh PKI flow: root CA, one intermediate per cluster (in parallel), ingress certificates.

Idempotent end to end: a second run reads everything and writes nothing (see :mod:`tasks.pki`).
"""

from __future__ import annotations

import asyncio

from prefect import flow

from flows.reports import PkiReport, publish_pki_report
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


@flow(name="ensure-mesh-pki", **FLOW_OPTIONS)
async def ensure_mesh_pki(spec: MeshSpec) -> PkiReport:
    """Ensure the root CA, each cluster's intermediate and the ingress certificates in Key Vault.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).
    """
    async with mesh_run(spec.environment):
        await check_blocks(required_blocks(spec))
        return await _ensure_pki(spec)


async def _ensure_pki(spec: MeshSpec) -> PkiReport:
    pki = spec.pki_store

    async def signed_by_root() -> list[ObjectRef]:
        # Key Vault generates the intermediate keys that will be needed while the root is ensured.
        root, _ = await asyncio.gather(
            ensure_root_ca(pki, spec.cluster_names),
            asyncio.gather(*(request_intermediate_ca(pki, c) for c in spec.clusters)),
        )
        intermediates, ingress = await asyncio.gather(
            asyncio.gather(*(ensure_intermediate_ca(pki, c) for c in spec.clusters)),
            ensure_ingress_certificate(pki),
        )
        return [*root, *(ref for refs in intermediates for ref in refs), ingress]

    chain, frontend = await asyncio.gather(signed_by_root(), ensure_frontend_certificate(pki))
    report = PkiReport(environment=spec.environment, objects=(*chain, frontend))
    await publish_pki_report(report)
    return report
