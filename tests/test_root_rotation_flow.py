"""rotate_root end to end: three phases, paused runs resumed through the Prefect API (as the UI
does), runs stopped in each phase and re-run, and an abort back to the old root.

The sandbox has no pods: each phase's wait on the CSI mounts reports "not run: no pods". A run
is stopped here by a permanent Key Vault fault at a write of the phase (the emulator's fault
injection); the state machine a re-run sees is the one a killed run leaves.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from azure.core.exceptions import ResourceNotFoundError
from cryptography import x509
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from blocks import AksCluster, KeyVault, load_block
from flows.install import MeshReport, install_mesh
from flows.rotate_root import RootRotationReport, rotate_root
from meshflow import appgateway as agw
from meshflow import pki
from meshflow.rootrotation import STATE_SECRET, RootRotationState
from meshflow.spec import MeshSpec
from sandbox.azure import AzureEmulator
from sandbox.prefect_server import PrefectServer
from tasks.aks import cluster_facts, forget_credentials
from tasks.pki import ROOT_KEY

pytestmark = pytest.mark.e2e


def _secret(spec: MeshSpec, name: str) -> str:
    vault = load_block(KeyVault, spec.key_vault_block)
    return str(vault.secret_client().get_secret(name).value)


def _certs(text: str) -> list[x509.Certificate]:
    return pki.load_pem_chain(text.encode())


def _gateway_roots(spec: MeshSpec) -> frozenset[bytes]:
    ingress = spec.ingress_clusters[0]
    sub, group, name = agw.parse_resource_id(str(cluster_facts(ingress).app_gateway_id))
    block = load_block(AksCluster, ingress.aks_block)
    body = block.network_client(sub).application_gateways.get(group, name).as_dict()
    (root,) = [
        c for c in body["properties"]["trustedRootCertificates"] if c["name"] == "root-certificate"
    ]
    return agw.certificate_ders(root["properties"]["data"]) or frozenset()


def _der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def _chain_root(spec: MeshSpec, cluster: str) -> x509.Certificate:
    return _certs(_secret(spec, f"{cluster}-cert-chain"))[-1]


def _state(spec: MeshSpec) -> RootRotationState:
    return RootRotationState.model_validate_json(_secret(spec, STATE_SECRET))


def _key_versions(spec: MeshSpec) -> dict[str, bool]:
    keys = load_block(KeyVault, spec.key_vault_block).key_client()
    return {str(p.version): bool(p.enabled) for p in keys.list_properties_of_key_versions(ROOT_KEY)}


def _run(spec: MeshSpec, **kwargs: Any) -> RootRotationReport:
    forget_credentials()
    return asyncio.run(rotate_root(spec, **kwargs))


@pytest.fixture(scope="module")
def installed(installed_mesh: MeshReport) -> MeshReport:
    return installed_mesh


class _Background:
    """A rotate_root run in a thread, to be resumed through the Prefect API while it waits."""

    def __init__(self, spec: MeshSpec) -> None:
        self.result: RootRotationReport | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = _run(spec, approve="ask")
            except BaseException as exc:
                self.error = exc

        # The test's Prefect settings (its server) are context variables: run in a copy.
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(run,), daemon=True)
        self.thread.start()

    def paused(self, timeout: float = 120.0) -> UUID:
        """The id of the run once it waits for an operator."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.thread.is_alive() or self.result is not None, self.error
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        tags=FlowRunFilterTags(all_=["mesh:e2e"]),
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.PAUSED])
                        ),
                    )
                )
            if runs:
                return runs[0].id
            time.sleep(0.5)
        raise AssertionError(f"the run did not pause within {timeout:.0f}s ({self.error})")

    def resume(self, decision: str, note: str) -> None:
        run_id = self.paused()
        resume_flow_run(run_id, run_input={"decision": decision, "note": note})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until it runs again
            with get_client(sync_client=True) as client:
                if client.read_flow_run(run_id).state_type != StateType.PAUSED:
                    return
            time.sleep(0.3)

    def finished(self) -> RootRotationReport:
        self.thread.join(timeout=300)
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


@pytest.fixture
def no_faults(azure_emulator: AzureEmulator) -> Iterator[Callable[..., None]]:
    def fault(pattern: str, method: str) -> None:
        azure_emulator.add_fault(pattern, method=method, status=403, times=1000)

    yield fault
    azure_emulator.clear_faults()


def test_three_phases_approved_in_the_ui_move_every_cluster_and_the_gateway_to_the_new_root(
    installed: MeshReport, mesh_env: MeshSpec
) -> None:
    old_bundle = _secret(mesh_env, "root-cert")
    (old_root,) = _certs(old_bundle)
    versions = _key_versions(mesh_env)
    names = [c.name for c in mesh_env.clusters]
    run = _Background(mesh_env)

    run.paused()  # phase 1 done: both roots trusted, the old one still issues
    both = _secret(mesh_env, "root-cert")
    assert both.startswith(old_bundle)  # byte for byte (Istio 1.26-1.29 compare raw bytes)
    old, new = _certs(both)
    assert old == old_root
    assert new != old_root
    assert _gateway_roots(mesh_env) == {_der(old), _der(new)}
    assert all(_chain_root(mesh_env, c) == old_root for c in names)
    assert (_state(mesh_env).phase, _state(mesh_env).completed) == (1, 1)
    run.resume("approve", "every cluster trusts both")

    run.paused()  # phase 2 done: intermediates from the new root, both still trusted
    assert _secret(mesh_env, "root-cert") == both
    assert _gateway_roots(mesh_env) == {_der(old), _der(new)}
    for c in names:
        chain = _certs(_secret(mesh_env, f"{c}-cert-chain"))
        assert chain[-1] == new
        assert pki.signed_by(chain[0], new)
    run.resume("approve", "leaves reissued")

    report = run.finished()
    assert report.status == "done" and report.completed == 3  # noqa: PT018
    assert _certs(_secret(mesh_env, "root-cert")) == [new]
    assert _gateway_roots(mesh_env) == {_der(new)}
    assert all(_chain_root(mesh_env, c) == new for c in names)
    after = _key_versions(mesh_env)
    assert len(after) == len(versions) + 1  # one new root, the old one disabled
    assert [v for v, on in after.items() if on] == [report.new_root_version]
    assert "phase 2 approved: every cluster trusts both" in report.history
    # The mesh is converged: an install finds nothing to do under the new root.
    forget_credentials()
    again = asyncio.run(install_mesh(mesh_env))
    assert again.ok and again.writes == 0  # noqa: PT018


def test_a_run_stopped_in_each_phase_resumes_there_and_never_makes_a_second_root(
    installed: MeshReport, mesh_env: MeshSpec, no_faults: Callable[..., None],
    azure_emulator: AzureEmulator,
) -> None:  # fmt: skip
    start = _key_versions(mesh_env)
    stops = [
        (1, r"^/secrets/root-cert$", "PUT"),  # phase 1: both roots into root-cert
        (2, r"^/certificates/[a-z]+-ca-cert/create$", "POST"),  # phase 2: reissue
        (3, r"^/secrets/root-cert$", "PUT"),  # phase 3: only the new root
    ]
    rotation = None
    for phase, pattern, method in stops:
        no_faults(pattern, method)
        with pytest.raises(Exception, match=r"403|[Ff]orbidden|permission"):
            _run(mesh_env, approve="auto")
        azure_emulator.clear_faults()
        state = _state(mesh_env)
        rotation = rotation or state.rotation_id
        assert (state.rotation_id, state.status, state.phase) == (rotation, "in progress", phase)
        assert state.completed == phase - 1
    report = _run(mesh_env, approve="auto")
    assert (report.rotation_id, report.status) == (rotation, "done")
    assert len(_key_versions(mesh_env)) == len(start) + 1  # one new root for four runs
    assert _certs(_secret(mesh_env, "root-cert")) == [_certs(_state(mesh_env).new_pem)[0]]


def test_an_abort_after_phase_2_goes_back_to_the_old_root_everywhere(
    installed: MeshReport, mesh_env: MeshSpec
) -> None:
    old_bundle = _secret(mesh_env, "root-cert")
    (old_root,) = _certs(old_bundle)
    run = _Background(mesh_env)
    run.resume("approve", "")
    run.paused()
    assert all(_chain_root(mesh_env, c.name) != old_root for c in mesh_env.clusters)
    run.resume("abort", "a workload pinned the old root")
    report = run.finished()
    assert report.status == "aborted"
    assert _secret(mesh_env, "root-cert") == old_bundle  # exactly as before
    assert _gateway_roots(mesh_env) == {_der(old_root)}
    assert all(_chain_root(mesh_env, c.name) == old_root for c in mesh_env.clusters)
    enabled = [v for v, on in _key_versions(mesh_env).items() if on]
    assert enabled == [_state(mesh_env).old_version]
    forget_credentials()
    again = asyncio.run(install_mesh(mesh_env))
    assert again.ok and again.writes == 0  # noqa: PT018


REPO = Path(__file__).resolve().parent.parent


def _rotate_in_child(spec_file: Path, server: PrefectServer) -> subprocess.Popen[bytes]:
    """``rotate_root(spec, approve="auto")`` in a process of its own, to be killed."""
    return subprocess.Popen(
        [sys.executable, "-c",
         "import asyncio, sys; from flows.rotate_root import rotate_root; "
         "from meshflow.spec import MeshSpec; "
         "asyncio.run(rotate_root(MeshSpec.model_validate_json(open(sys.argv[1]).read()), "
         "approve='auto'))",
         str(spec_file)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PREFECT_API_URL": server.api_url,
             "PREFECT_HOME": str(server.database.parent)},
    )  # fmt: skip


def test_a_run_killed_in_each_phase_is_resumed_there_by_the_next_and_makes_one_root(
    installed: MeshReport, mesh_env: MeshSpec, azure_emulator: AzureEmulator,
    prefect_server: PrefectServer, tmp_path: Path,
) -> None:  # fmt: skip
    # Each child is held (a slow Key Vault answer) at a write of the phase, then SIGKILLed:
    # the next run takes the mesh lock once the dead run's lease lapses, and goes on from the
    # recorded phase.
    spec_file = tmp_path / "mesh.json"
    spec_file.write_text(mesh_env.model_dump_json())
    start = _key_versions(mesh_env)
    holds = [
        (1, r"^/secrets/root-cert$", "PUT"),  # phase 1: both roots into root-cert
        (2, r"^/keys/istio-root-ca-key/[^/]+$", "PATCH"),  # phase 2: the switch
        (3, r"^/secrets/root-cert$", "PUT"),  # phase 3: only the new root
    ]
    previous = _state(mesh_env).rotation_id if _has_state(mesh_env) else None
    rotation = None
    try:
        for phase, pattern, method in holds:
            # Held, then refused (503) rather than served: a request of a killed run must not
            # land minutes later, over what the next runs and tests wrote.
            azure_emulator.add_fault(pattern, method=method, status=503, delay_ms=120_000,
                                     times=1000)  # fmt: skip
            child = _rotate_in_child(spec_file, prefect_server)
            deadline = time.monotonic() + 150  # includes the lapse of a killed run's lease
            while time.monotonic() < deadline and child.poll() is None:
                state = _state(mesh_env) if _has_state(mesh_env) else None
                if (
                    state is not None
                    and state.rotation_id != previous
                    and (state.phase, state.status) == (phase, "in progress")
                ):
                    break
                time.sleep(0.3)
            assert child.poll() is None, "the run ended instead of being held"
            time.sleep(2.0)  # at the held write of the phase
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            azure_emulator.clear_faults()
            state = _state(mesh_env)
            rotation = rotation or state.rotation_id
            assert (state.rotation_id, state.status, state.phase) == (
                rotation,
                "in progress",
                phase,
            )
        report = _run(mesh_env, approve="auto")
    finally:
        azure_emulator.clear_faults()
    assert (report.rotation_id, report.status) == (rotation, "done")
    assert len(_key_versions(mesh_env)) == len(start) + 1  # one new root for four runs
    assert _certs(_secret(mesh_env, "root-cert")) == _certs(_state(mesh_env).new_pem)


def _has_state(spec: MeshSpec) -> bool:
    try:
        _secret(spec, STATE_SECRET)
    except ResourceNotFoundError:
        return False
    return True


def test_a_mesh_with_an_exportable_root_moves_to_a_vault_only_root(
    installed: MeshReport, mesh_env: MeshSpec, azure_emulator: AzureEmulator
) -> None:
    # A mesh of the older design: its root is the exportable certificate istio-root-ca.
    from tasks.keyvault import import_cert_key
    from tasks.pki import ROOT_CA, ROOT_CERT_OBJECT, _now
    from tests.pki_offline import generate_root_ca

    for name in ("root-cert", ROOT_CERT_OBJECT, "echoserver", STATE_SECRET):
        azure_emulator.drop_certificate(name)
        azure_emulator.drop_secret(name)
    azure_emulator.drop_key(ROOT_KEY)
    for c in mesh_env.clusters:
        azure_emulator.drop_certificate(f"{c.name}-ca-cert")
        azure_emulator.drop_secret(f"{c.name}-cert-chain")
    vault = load_block(KeyVault, mesh_env.key_vault_block)
    legacy = generate_root_ca(now=_now(), key_size=2048)
    import_cert_key(vault.certificate_client(), ROOT_CA, legacy, tags={}, pem=True)
    try:
        forget_credentials()
        assert asyncio.run(install_mesh(mesh_env)).ok
        assert all(_chain_root(mesh_env, c.name) == legacy.cert for c in mesh_env.clusters)
        report = _run(mesh_env, approve="auto")
        assert report.status == "done"
        (new,) = _certs(_secret(mesh_env, "root-cert"))
        assert new != legacy.cert
        assert all(_chain_root(mesh_env, c.name) == new for c in mesh_env.clusters)
        assert _gateway_roots(mesh_env) == {_der(new)}
        certs = vault.certificate_client()
        assert [p.enabled for p in certs.list_properties_of_certificate_versions(ROOT_CA)] == [
            False
        ]  # the exportable root signs no more
        key = vault.key_client().get_key(ROOT_KEY, report.new_root_version)
        assert key.properties.exportable is False  # the new root never leaves the vault
        forget_credentials()
        again = asyncio.run(install_mesh(mesh_env))
        assert again.ok and again.writes == 0  # noqa: PT018
    finally:
        azure_emulator.drop_certificate(ROOT_CA)  # later modules start from a vault-only root
