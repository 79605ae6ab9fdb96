"""Failures forced where a real deployment meets them, through the flows' real entry points.

At the Azure emulator, or at a real API server through a fault proxy: transient failures are
retried by the task and the run completes; a refused write fails the run cleanly, the rest of
the join still happens and the next run converges; and nothing secret reaches Prefect. At the
end everything in the Prefect home is decoded (SQLite rows, result files: JSON, base64,
pickles) and searched for the exact secret values the runs used and for any private key.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from prefect.blocks.system import Secret
from prefect.logging.handlers import APILogHandler
from pydantic import SecretStr

from blocks import AzureCredentials, KeyVault, forget_blocks, load_block
from flows.install import install_mesh
from flows.pki import ensure_mesh_pki
from flows.verify import verify_access
from meshflow.spec import MeshSpec, PkiSettings
from sandbox import environment as env
from sandbox import kube, processes
from sandbox.azure import AzureEmulator
from sandbox.kube_faults import KubeFaultProxy
from sandbox.prefect_server import PrefectServer
from tasks.aks import forget_credentials
from tasks.pki import ROOT_CA, ROOT_CERT_OBJECT, ROOT_KEY
from tests.pki_offline import generate_ingress_leaf, generate_root_ca
from tests.secret_scan import scan

pytestmark = pytest.mark.e2e

READER = (
    "/api/v1/namespaces/istio-system/secrets/istio-reader-service-account-istio-remote-secret-token"
)
WRONG_SECRET = "wrong-but-real-looking-secret-4f9c2e"


# -- the environment: two control planes behind fault proxies, its own blocks -----------------


class Leak:
    """What the module's runs use, and every secret value they saw."""

    def __init__(self, spec: MeshSpec, proxies: dict[str, KubeFaultProxy]) -> None:
        self.spec = spec
        self.proxies = proxies
        self.secrets: set[str] = set()


@pytest.fixture(scope="module")
def leak(
    tmp_path_factory: pytest.TempPathFactory,
    azure_emulator: AzureEmulator,
    prefect_server: PrefectServer,
    istioctl_standin: Path,
) -> Iterator[Leak]:
    root = tmp_path_factory.mktemp("leak")
    clusters = kube.start_clusters(["leak-a", "leak-b"], root)
    proxies = {c.name: KubeFaultProxy(c).start() for c in clusters}
    try:
        spec = env.wire_environment(
            azure_emulator, clusters, environment="leak", pki=PkiSettings(ca_key_size=2048)
        )
        for c in clusters:  # the clusters' AKS credentials now lead through the proxies
            registration = env.cluster_registration(c)
            registration["admin_kubeconfig"] = proxies[c.name].kubeconfig(c.admin_kubeconfig)
            keys = (registration.pop("subscription"), registration.pop("resourceGroup"),
                    registration.pop("name"))  # fmt: skip
            azure_emulator.register_cluster(*keys, **registration)
        found = Leak(spec, proxies)
        creds = load_block(AzureCredentials, spec.credentials_block)
        assert creds.client_secret is not None
        found.secrets.add(creds.client_secret.get_secret_value())
        found.secrets |= {_token(c.admin_kubeconfig) for c in clusters}
        yield found
    finally:
        for proxy in proxies.values():
            proxy.stop()
        for c in clusters:
            c.stop()
        processes.stop(processes.running_under(str(root)))


def _token(kubeconfig_path: Path) -> str:
    return str(yaml.safe_load(kubeconfig_path.read_text())["users"][0]["user"]["token"])


def _run(flow: Any, spec: MeshSpec) -> Any:
    forget_credentials()
    forget_blocks()
    return asyncio.run(flow(spec, return_state=True))


def _scrub_vault(emulator: AzureEmulator, spec: MeshSpec) -> None:
    emulator.drop_key(ROOT_KEY)
    names = [ROOT_CA, ROOT_CERT_OBJECT, "root-cert", "echoserver", "frontend-certificate"]
    for c in spec.clusters:
        names += [f"{c.name}-ca-cert", f"{c.name}-cert-chain"]
    for name in names:
        emulator.drop_certificate(name)
        emulator.drop_secret(name)


def _failed(state: Any, *words: str) -> None:
    assert state.is_failed(), state
    for word in words:
        assert word in str(state.message), state.message


# -- the forced failures -------------------------------------------------------------------


def test_a_wrong_client_secret_fails_naming_the_block(
    leak: Leak, azure_emulator: AzureEmulator
) -> None:
    wrong = leak.spec.model_copy(update={"environment": "leak-wrong"})
    creds = load_block(AzureCredentials, leak.spec.credentials_block)
    creds.client_secret = SecretStr(WRONG_SECRET)
    creds.save("leak-wrong", overwrite=True, _sync=True)  # type: ignore[call-arg]
    vault = load_block(KeyVault, leak.spec.key_vault_block)
    vault.credentials = load_block(AzureCredentials, "leak-wrong")
    vault.save("leak-wrong", overwrite=True, _sync=True)  # type: ignore[call-arg]
    wrong = wrong.model_copy(
        update={"credentials_block": "leak-wrong", "key_vault_block": "leak-wrong"}
    )
    leak.secrets.add(WRONG_SECRET)
    state = _run(ensure_mesh_pki, wrong)
    _failed(state, "AADSTS7000215", "authentication failed", "'leak-wrong'")


@pytest.mark.parametrize(
    ("method", "path", "where"),
    [
        ("POST", rf"^/keys/{ROOT_KEY}/create$", f"keys/{ROOT_KEY}/create"),
        ("POST", rf"^/keys/{ROOT_KEY}/[^/]+/sign$", "/sign"),
        ("POST", r"^/certificates/leak-a-ca-cert/pending/merge$", "pending/merge"),
        ("PUT", r"^/secrets/root-cert$", "secrets/root-cert"),
        ("PUT", r"^/secrets/leak-b-cert-chain$", "secrets/leak-b-cert-chain"),
    ],
)
def test_key_vault_refusing_a_write_that_carries_key_material_fails_cleanly(
    leak: Leak, azure_emulator: AzureEmulator, method: str, path: str, where: str
) -> None:
    _scrub_vault(azure_emulator, leak.spec)
    azure_emulator.add_fault(path, method=method, status=403, times=1000)
    try:
        state = _run(ensure_mesh_pki, leak.spec)
    finally:
        azure_emulator.clear_faults()
    _failed(state, "Key Vault", where, "HTTP 403")


def test_refusing_the_frontend_pfx_import_fails_cleanly(
    leak: Leak, azure_emulator: AzureEmulator
) -> None:
    now = dt.datetime.now(dt.UTC)
    pair = generate_ingress_leaf(
        generate_root_ca(now=now, key_size=2048), now=now, host="front.example"
    )
    pfx = pkcs12.serialize_key_and_certificates(
        b"front", pair.key, pair.cert, None, serialization.NoEncryption()
    )
    blob = base64.b64encode(pfx).decode()
    Secret(value=SecretStr(blob)).save("leak-frontend-pfx", overwrite=True, _sync=True)  # type: ignore[call-arg]
    leak.secrets |= {blob, pair.key_pem().decode().splitlines()[1]}
    spec = leak.spec.model_copy(update={"frontend_pfx_block": "leak-frontend-pfx"})
    azure_emulator.add_fault(
        r"^/certificates/frontend-certificate/import$", method="POST", status=403, times=1000
    )
    try:
        state = _run(ensure_mesh_pki, spec)
    finally:
        azure_emulator.clear_faults()
    _failed(state, "frontend-certificate/import", "HTTP 403")


def test_an_api_server_refusing_the_reader_token_or_the_remote_secret_fails_cleanly(
    leak: Leak,
) -> None:
    assert _run(install_mesh, leak.spec).is_completed()  # the mesh as it should be
    for name, proxy in leak.proxies.items():
        token = _reader_token(proxy, name)
        assert token
        leak.secrets.add(token)
    a, b = leak.proxies["leak-a"], leak.proxies["leak-b"]
    a.add_fault(f"^{READER}$", method="GET", status=403, times=1000)
    try:
        state = _run(install_mesh, leak.spec)
    finally:
        a.clear_faults()
    _failed(state, "cluster 'leak-a'", "istio-remote-secret-token", "HTTP 403")
    # A remote secret that must be rewritten (its copy was edited), refused by the target.
    _edit_remote_secret(b, "leak-a")
    b.add_fault(r"^/api/v1/namespaces/istio-system/secrets/istio-remote-secret-leak-a$",
                method="PATCH", status=403, times=1000)  # fmt: skip
    try:
        state = _run(install_mesh, leak.spec)
    finally:
        b.clear_faults()
    _failed(state, "cluster 'leak-b'", "istio-remote-secret-leak-a", "HTTP 403")
    assert _run(install_mesh, leak.spec).is_completed()  # and it converges afterwards


# -- retries and the join, in the real flows ----------------------------------------------------


def _task_runs(flow_run_id: Any, prefix: str, settle: float = 15.0) -> list[Any]:
    """The flow run's task runs named ``prefix...``, in their final state.

    Prefect 3 records task runs from the events the client sends, after the flow run may
    already have ended, so this waits (bounded) until they are there and no longer running.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + settle
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
                flow_run_id])))  # fmt: skip
        found = [t for t in runs if t.name.startswith(prefix)]
        final = found and all(t.state_type and t.state_type.value != "RUNNING" for t in found)
        if final or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_transient_failure_is_retried_and_a_refusal_is_not(leak: Leak) -> None:
    a = leak.proxies["leak-a"]
    a.add_fault(r"^/api/v1/namespaces$", method="GET", status=503, times=2)
    state = _run(verify_access, leak.spec)
    assert state.is_completed(), state.message
    (listing,) = _task_runs(state.state_details.flow_run_id, "list-namespaces-leak-a")
    assert listing.run_count == 3  # failed twice (503: transient), retried, then succeeded
    assert [s for m, p, s in a.seen if p == "/api/v1/namespaces"][-3:] == [503, 503, 200]

    a.add_fault(r"^/api/v1/namespaces$", method="GET", status=403, times=1)
    state = _run(verify_access, leak.spec)
    a.clear_faults()
    _failed(state, "cluster 'leak-a'", "HTTP 403")
    (listing,) = _task_runs(state.state_details.flow_run_id, "list-namespaces-leak-a")
    assert listing.run_count == 1  # a refusal fails at once: retrying would not change it


def test_a_refused_remote_secret_is_reported_missing_while_the_rest_of_the_join_happens(
    leak: Leak,
) -> None:
    assert _run(install_mesh, leak.spec).is_completed()
    a, b = leak.proxies["leak-a"], leak.proxies["leak-b"]
    _core(a).delete_namespaced_secret("istio-remote-secret-leak-b", "istio-system")
    _core(b).delete_namespaced_secret("istio-remote-secret-leak-a", "istio-system")
    b.add_fault(r"^/api/v1/namespaces/istio-system/secrets$", method="POST", status=403,
                times=1000)  # fmt: skip
    try:
        state = _run(install_mesh, leak.spec)
    finally:
        b.clear_faults()
    _failed(state, "cluster 'leak-b'", "istio-remote-secret-leak-a", "HTTP 403")
    run_id = state.state_details.flow_run_id
    # leak-a's exchange failed, yet its secrets were checked (and found missing in leak-b);
    # the exchange from leak-b into leak-a went ahead.
    (check,) = _task_runs(run_id, "check-remote-secrets-of-leak-a")
    assert check.state_type.value == "COMPLETED"
    secret = _core(a).read_namespaced_secret("istio-remote-secret-leak-b", "istio-system")
    assert secret.metadata.labels["istio/multiCluster"] == "true"
    report = asyncio.run(install_mesh(leak.spec))  # the cause gone, the next run converges
    assert report.ok
    assert report.readable_into("leak-b") == 1


def _core(proxy: KubeFaultProxy) -> Any:
    from kubernetes import client, config

    api = config.new_client_from_config_dict(yaml.safe_load(proxy.kubeconfig(
        proxy.cluster.admin_kubeconfig)))  # fmt: skip
    return client.CoreV1Api(api)


# -- the scan --------------------------------------------------------------------------------


def test_nothing_prefect_stored_holds_a_secret_or_a_private_key(
    leak: Leak, prefect_server: PrefectServer, azure_emulator: AzureEmulator
) -> None:
    APILogHandler().flush()
    secrets = {s for s in leak.secrets if len(s) >= 16}
    secrets |= _bearer_tokens(azure_emulator)
    assert len(secrets) >= 6  # client secrets, admin and reader tokens, Entra tokens, the PFX
    home = prefect_server.database.parent
    results = [p for p in (home / "storage").rglob("*") if p.is_file()]
    assert results  # the failed flow runs' exceptions were written, and are scanned
    for path in results:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    hits = scan(home, secrets)
    assert hits == []


def test_the_scan_finds_what_the_attack_found(tmp_path: Path) -> None:
    # A failed run's exception as Prefect wrote it before: cloudpickled, base64, in JSON;
    # the SDK error carried its request, with the key inside the body's JSON value.
    marker = "Bearer eyJmarker.secret.token-value"
    key = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nMIIE\n").decode()
    exc = RuntimeError("Operation returned an invalid status 'Forbidden'")
    exc.request = {"headers": {"Authorization": marker}, "body": json.dumps({"value": key})}  # type: ignore[attr-defined]
    blob = base64.b64encode(cloudpickle.dumps(exc)).decode()
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "abc").write_text(json.dumps({"metadata": {}, "result": blob}))
    assert scan(tmp_path, {marker}) == [
        f"{tmp_path / 'storage' / 'abc'}: a private key",
        f"{tmp_path / 'storage' / 'abc'}: a secret value",
    ]


# -- helpers ---------------------------------------------------------------------------------


def _reader_token(proxy: KubeFaultProxy, name: str) -> str:
    secret = _core(proxy).read_namespaced_secret(
        "istio-reader-service-account-istio-remote-secret-token", "istio-system"
    )
    return base64.b64decode(secret.data["token"]).decode()


def _edit_remote_secret(proxy: KubeFaultProxy, source: str) -> None:
    _core(proxy).patch_namespaced_secret(
        f"istio-remote-secret-{source}", "istio-system",
        {"data": {source: base64.b64encode(b"edited by hand").decode()}},
    )  # fmt: skip


def _bearer_tokens(emulator: AzureEmulator) -> set[str]:
    """The access tokens Entra (the emulator) issued while bodies were recorded."""
    tokens = set()
    for entry in emulator.requests_log():
        body = entry.get("response_body") or ""
        if "/oauth2/" in entry["path"] and "access_token" in body:
            tokens.add(str(json.loads(body)["access_token"]))
    return tokens
