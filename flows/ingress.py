"""Expose the mesh: steps 12-22 of ``docs/runbook.md``, on every cluster marked ``ingress: true``.

Per ingress cluster, as ``expose-cluster-<c>`` (the clusters side by side):

1. **Where**: the App Gateway's public IP from ARM (``read-gateway-endpoint``), and what the
   cluster already serves (``read-ingress-state``).
2. **HTTP** (12-15): Gateway and Ingress, a probe that must answer 404 from ``istio-envoy``,
   the VirtualService for ``<host>``, a probe that must answer 200. Skipped when the cluster
   already serves the HTTPS Gateway of step 21 and the spec wants HTTPS: a re-run (or
   ``--http-only``) does not step back to HTTP.
3. **HTTPS** (16-22): the App Gateway's identity, role, vault access and certificates
   (``ensure-app-gateway``), the gateway's certificate volume through the same install as step
   07 (``install-istio``: unchanged when it already has it), the TLS Gateway, VirtualService
   and Ingress, and a probe over HTTPS that must answer 200.
4. **What AGIC did**: the App Gateway read back and the Ingress's status (``check-agic``).

The shared certificates (16, 19) are ensured once, before the clusters. Probes and the AGIC
check report "not run" where no data plane or no controller runs (the sandbox). Idempotent: a
second run writes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.reports import ClusterIngress, IngressReport
from flows.runs import FLOW_OPTIONS, arm_vault, mesh_run, required_blocks, settle
from meshflow.manifests import ingress_secret_provider_class
from meshflow.manifests.ingress import (
    ECHOSERVER_HOST,
    http_gateway,
    http_ingress,
    tls_gateway,
    tls_ingress,
    virtual_service,
)
from meshflow.spec import ClusterSpec, IngressSettings, MeshSpec
from tasks.aks import ClusterFacts, describe_aks_cluster, secrets_provider_identity
from tasks.appgateway import (
    GatewayEndpoint,
    check_agic,
    ensure_app_gateway,
    read_gateway_endpoint,
)
from tasks.blocking import run_blocking
from tasks.istio import IstioInstall, fetch_istioctl, install_istio
from tasks.keyvault import ObjectRef, vault_facts
from tasks.kube import Applied, IngressState, apply_manifests, read_ingress_state
from tasks.pki import (
    FrontendTrust,
    ensure_frontend_certificate,
    ensure_ingress_certificate,
    read_frontend_trust,
    read_root_certificate,
)
from tasks.preflight import check_blocks
from tasks.probes import ProbeRequest, ProbeResult, not_run, probe_endpoint

__all__ = ["expose_cluster", "expose_clusters", "expose_mesh", "ingress_certificates"]

NO_DATA_PLANE = "no data plane: the cluster has no nodes to run the gateway's pods"
ENVOY = "istio-envoy"


@flow(name="expose-mesh", **FLOW_OPTIONS)
async def expose_mesh(spec: MeshSpec, http_only: bool = False) -> IngressReport:
    """Steps 12-22 on the ingress clusters of an installed mesh; idempotent.

    Args:
        spec: The mesh description: environment, clusters, Istio, PKI, Key Vault and ingress
            (the environment's file in ``deployments/environments/`` is the default).
        http_only: Stop after step 15 (HTTP through the App Gateway) this run; a cluster
            already on HTTPS stays on it (set ``ingress.https: false`` in the mesh description
            to go back to HTTP).
    """
    async with mesh_run(spec.environment):
        await check_blocks(required_blocks(spec), arm_vault(spec))
        if spec.ingress.https and not http_only:
            await ingress_certificates(spec)
        outcomes = await expose_clusters(spec, spec.ingress_clusters, http_only=http_only)
        failed = [o for o in outcomes.values() if isinstance(o, BaseException)]
        if failed:
            raise failed[0]
        report = IngressReport(
            environment=spec.environment,
            clusters=tuple(o for o in outcomes.values() if isinstance(o, ClusterIngress)),
        )
        await acreate_markdown_artifact(report.markdown(), key=f"ingress-{spec.environment}")
        get_run_logger().info(
            "ingress %s: %d clusters, %d writes, %s", spec.environment, len(report.clusters),
            report.writes, "no probe failed" if report.ok else "PROBLEMS: see the artifact",
        )  # fmt: skip
        return report


async def ingress_certificates(spec: MeshSpec) -> list[ObjectRef]:
    """Steps 16 and 19, once for the mesh: the listener's and the gateway's certificates."""
    pki = spec.pki_store
    return list(
        await asyncio.gather(ensure_frontend_certificate(pki), ensure_ingress_certificate(pki))
    )


async def expose_clusters(
    spec: MeshSpec, clusters: Sequence[ClusterSpec], *, http_only: bool = False
) -> Mapping[str, ClusterIngress | BaseException]:
    """``expose-cluster`` for each of ``clusters``, side by side, each run to its end."""
    return await settle(
        {c.name: expose_cluster(spec, c.name, http_only=http_only) for c in clusters}
    )


@flow(name="expose-cluster", flow_run_name="expose-cluster-{cluster}", **FLOW_OPTIONS)
async def expose_cluster(spec: MeshSpec, cluster: str, http_only: bool = False) -> ClusterIngress:
    """Steps 12-22 on one ingress cluster; idempotent. The certificates of 16 and 19 must exist."""
    c = spec.cluster(cluster)
    https = spec.ingress.https and not http_only
    facts, state = await asyncio.gather(describe_aks_cluster(c), read_ingress_state(c))
    endpoint = await read_gateway_endpoint(c, facts)
    host = spec.ingress.host_for(endpoint.ip)
    # Already on HTTPS, as the spec wants: neither a re-run nor --http-only steps back to HTTP.
    on_tls = state.serves_tls and spec.ingress.https
    applied: list[Applied] = []
    probes: list[ProbeResult] = []
    if on_tls:
        probes.append(not_run(f"http://{host}/", 200, "the gateway already serves HTTPS"))
    else:
        applied, probes = await _http(c, spec.ingress, host, endpoint, state)
    if not https:
        checks = await check_agic(c, facts, ip=endpoint.ip, tls=on_tls,
                                  controller_ready=state.agic_ready,
                                  wait_seconds=spec.ingress.agic_seconds)  # fmt: skip
        return ClusterIngress(cluster=c.name, host=host, endpoint=endpoint, https=on_tls,
                              applied=tuple(applied), probes=tuple(probes),
                              checks=tuple(checks))  # fmt: skip
    pki = spec.pki_store
    root_pem, trust, istioctl = await asyncio.gather(
        read_root_certificate(pki), read_frontend_trust(pki), fetch_istioctl(spec.istio_version)
    )
    # 17-18 on the App Gateway; 20: the SecretProviderClass (the install applied it, unless
    # HTTPS was turned on since) and the gateway's certificate volume, by the install of 07.

    async def mount() -> tuple[list[Applied], IstioInstall]:
        store = await _certificate_store(spec, c, facts)
        return store, await install_istio(spec, c, istioctl)

    gateway, (store, istio) = await asyncio.gather(
        ensure_app_gateway(c, facts, spec.key_vault_block, root_pem), mount()
    )
    applied += store
    applied += await apply_manifests(
        c, [tls_gateway(), virtual_service(ECHOSERVER_HOST), tls_ingress()]
    )
    https_probe, checks = await asyncio.gather(
        _probe(c, spec.ingress, f"https://{host}/", 200, endpoint, state, trust),
        check_agic(c, facts, ip=endpoint.ip, tls=True, controller_ready=state.agic_ready,
                   wait_seconds=spec.ingress.agic_seconds),
    )  # fmt: skip
    return ClusterIngress(
        cluster=c.name, host=host, endpoint=endpoint, https=True, applied=tuple(applied),
        gateway=tuple(gateway), istio=istio, probes=(*probes, https_probe), checks=tuple(checks),
    )  # fmt: skip


async def _certificate_store(spec: MeshSpec, c: ClusterSpec, facts: ClusterFacts) -> list[Applied]:
    """Step 20: SecretProviderClass ``istio-tls`` in ``istio-ingress`` (one read when there)."""
    vault = await run_blocking(vault_facts, spec.key_vault_block)
    spc = ingress_secret_provider_class(
        keyvault_name=vault.vault_name,
        tenant_id=vault.tenant_id,
        identity_client_id=secrets_provider_identity(c.name, facts),
    )
    return await apply_manifests(c, [spc])


async def _http(
    c: ClusterSpec,
    settings: IngressSettings,
    host: str,
    endpoint: GatewayEndpoint,
    state: IngressState,
) -> tuple[list[Applied], list[ProbeResult]]:
    """12-15: Gateway and Ingress; 404 from the gateway; the VirtualService; 200."""
    url = f"http://{host}/"
    applied = await apply_manifests(c, [http_gateway(), http_ingress()])
    no_route = await _probe(c, settings, url, 404, endpoint, state, None, server=ENVOY)
    applied += await apply_manifests(c, [virtual_service(host)])
    routed = await _probe(c, settings, url, 200, endpoint, state, None)
    return applied, [no_route, routed]


async def _probe(
    c: ClusterSpec,
    settings: IngressSettings,
    url: str,
    status: int,
    endpoint: GatewayEndpoint,
    state: IngressState,
    trust: FrontendTrust | None,
    *,
    server: str | None = None,
) -> ProbeResult:
    """A GET of ``url`` at the App Gateway's address (the host only names it), or "not run"."""
    if state.nodes == 0:
        return not_run(url, status, NO_DATA_PLANE)
    tls = url.startswith("https:")
    request = ProbeRequest(
        name=f"{c.name}-{'https' if tls else 'http'}-{status}",
        url=url,
        expect_status=status,
        expect_server=server,
        ca_pem=trust.ca_pem if trust else None,
        verify=trust.verify if trust else True,
        trust_system_store=trust.system_store if trust else False,
        deadline_seconds=settings.probe_seconds,
        attempt_timeout=min(10.0, settings.probe_seconds),
        connect_to=(endpoint.ip, 443 if tls else 80),
    )
    return await probe_endpoint(request)
