"""The emulator's state survives a restart: in-process, after SIGTERM and after SIGKILL.

Objects are written and read back with the real SDK clients; the clients (and the token their
credential cached) are the same before and after the restart, as for a flow that keeps running
while ``meshflow sandbox up`` restarts a stopped emulator.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import signal
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.certificates import CertificateClient, CertificatePolicy
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from azure.keyvault.secrets import SecretClient
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import (
    AccessPolicyEntry,
    Permissions,
    VaultAccessPolicyParameters,
    VaultAccessPolicyProperties,
)
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network import models as net
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.serialization import pkcs12

from sandbox import certs, processes
from sandbox.azure import STATE_FILE
from sandbox.azure.admin import EmulatorAdmin, start_emulator_process
from sandbox.azure.tls import load_or_generate, reusable_problem
from tests.emulator_fixtures import CLIENT_ID, CLIENT_SECRET, SUBSCRIPTION, new_emulator

pytestmark = pytest.mark.emulator
RG = "rg-persist"
FAST = {"_polling_interval": 0.01}
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\n"
CONFIG = {"clients": [{"client_id": CLIENT_ID, "secret": CLIENT_SECRET}], "pending_polls": 0}


class Clients:
    """Real SDK clients for one emulator URL, sharing one credential (closed together)."""

    def __init__(self, url: str, ca: Path, tenant: str) -> None:
        self._stack = ExitStack()
        verify = {"connection_verify": str(ca)}
        arm = {"base_url": url, **verify}
        self.credential = self._add(
            ClientSecretCredential(
                tenant, CLIENT_ID, CLIENT_SECRET, authority=url,
                disable_instance_discovery=True, **verify,
            )
        )  # fmt: skip
        self.secrets = self._add(SecretClient(url, self.credential, **verify))
        self.certificates = self._add(CertificateClient(url, self.credential, **verify))
        self.keys = self._add(KeyClient(url, self.credential, **verify))
        self.aks = self._add(ContainerServiceClient(self.credential, SUBSCRIPTION, **arm))
        self.network = self._add(NetworkManagementClient(self.credential, SUBSCRIPTION, **arm))
        self.msi = self._add(ManagedServiceIdentityClient(self.credential, SUBSCRIPTION, **arm))
        self.roles = self._add(AuthorizationManagementClient(self.credential, SUBSCRIPTION, **arm))
        self.vaults = self._add(KeyVaultManagementClient(self.credential, SUBSCRIPTION, **arm))
        self.ca = ca

    def _add(self, client: Any) -> Any:
        return self._stack.enter_context(client)

    def close(self) -> None:
        self._stack.close()


@dataclass
class Written:
    """What :func:`write_vault` wrote, to compare after the restart."""

    secret_versions: list[str]
    cert_version: str
    cert_der: bytes
    pending_csr: bytes
    key_versions: list[str]
    key_n: bytes
    key_created: list[dt.datetime | None]


def write_vault(c: Clients) -> Written:
    """Secrets (versions, disabled, soft-deleted), certificates, a pending creation, keys."""
    first = c.secrets.set_secret("kept", "one", content_type="text/plain", tags={"t": "1"})
    second = c.secrets.set_secret("kept", "two")
    c.secrets.update_secret_properties("kept", first.properties.version, enabled=False)
    c.secrets.set_secret("binned", "gone")
    c.secrets.begin_delete_secret("binned").wait()
    cert = c.certificates.begin_create_certificate(
        "issued", CertificatePolicy.get_default(), **FAST
    ).result()
    pending = c.certificates.begin_create_certificate(
        "pending-ca", CertificatePolicy(issuer_name="Unknown", subject="CN=pending CA")
    ).result()
    keys = [c.keys.create_rsa_key("signer", size=2048) for _ in range(2)]
    c.keys.update_key_properties("signer", keys[0].properties.version, enabled=False)
    c.keys.create_ec_key("binned-key")
    c.keys.begin_delete_key("binned-key").wait()
    versions = list(c.keys.list_properties_of_key_versions("signer"))
    return Written(
        secret_versions=[first.properties.version or "", second.properties.version or ""],
        cert_version=cert.properties.version or "",
        cert_der=bytes(cert.cer or b""),
        pending_csr=bytes(pending.csr or b""),
        key_versions=[k.properties.version or "" for k in keys],
        key_n=bytes(keys[1].key.n or b""),
        key_created=[v.created_on for v in versions],
    )


def check_vault(c: Clients, w: Written) -> None:
    """Everything :func:`write_vault` wrote reads back the same."""
    assert c.secrets.get_secret("kept").value == "two"
    versions = {p.version: p for p in c.secrets.list_properties_of_secret_versions("kept")}
    assert set(versions) == set(w.secret_versions)
    assert versions[w.secret_versions[0]].enabled is False
    assert versions[w.secret_versions[0]].tags == {"t": "1"}
    assert c.secrets.get_deleted_secret("binned").recovery_id
    cert = c.certificates.get_certificate("issued")
    assert (cert.properties.version, bytes(cert.cer or b"")) == (w.cert_version, w.cert_der)
    pfx = base64.b64decode(c.secrets.get_secret("issued").value or "")
    key, leaf, _ = pkcs12.load_key_and_certificates(pfx, None)
    assert leaf is not None
    assert isinstance(key, rsa.RSAPrivateKey)
    assert leaf.public_bytes(serialization.Encoding.DER) == w.cert_der
    assert key.public_key().public_numbers() == leaf.public_key().public_numbers()  # type: ignore[union-attr]
    op = c.certificates.get_certificate_operation("pending-ca")
    assert (op.status, bytes(op.csr or b"")) == ("inProgress", w.pending_csr)
    merge_pending(c, op.csr or b"")  # the pending key survived: a certificate for it merges

    listed = list(c.keys.list_properties_of_key_versions("signer"))
    assert [v.version for v in listed] == w.key_versions
    assert [v.created_on for v in listed] == w.key_created
    assert [v.enabled for v in listed] == [False, True]
    signer = c.keys.get_key("signer")
    assert bytes(signer.key.n or b"") == w.key_n
    digest = hashlib.sha256(b"after the restart").digest()
    with CryptographyClient(signer, c.credential, connection_verify=str(c.ca)) as crypto:
        signature = crypto.sign(SignatureAlgorithm.rs256, digest).signature
    numbers = rsa.RSAPublicNumbers(int.from_bytes(bytes(signer.key.e or b""), "big"),
                                   int.from_bytes(w.key_n, "big"))  # fmt: skip
    numbers.public_key().verify(
        signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
    )
    with CryptographyClient(c.keys.get_key("signer", w.key_versions[0]), c.credential,
                            connection_verify=str(c.ca)) as disabled:  # fmt: skip
        with pytest.raises(HttpResponseError) as refused:
            disabled.sign(SignatureAlgorithm.rs256, digest)
        assert refused.value.status_code == 403
    assert c.keys.get_deleted_key("binned-key").recovery_id
    assert c.keys.get_key("issued").properties.managed is True


def merge_pending(c: Clients, csr_der: bytes) -> None:
    csr = x509.load_der_x509_csr(bytes(csr_der))
    ca_key = rsa.generate_private_key(65537, 2048)
    name = x509.Name.from_rfc4514_string("CN=test root")
    now = dt.datetime.now(dt.UTC)
    issued = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(name)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    merged = c.certificates.merge_certificate(
        "pending-ca", [issued.public_bytes(serialization.Encoding.DER)]
    )
    assert merged.properties.version


@dataclass
class ArmWritten:
    ip: str
    identity_client_id: str
    role_name: str
    principal: str


def write_arm(c: Clients, tenant: str) -> ArmWritten:
    """A public IP (long-running PUT), an identity, a role assignment, a vault access policy."""
    body = net.PublicIPAddress(location="westeurope", public_ip_allocation_method="Static")
    ip = c.network.public_ip_addresses.begin_create_or_update(RG, "pip", body).result()
    identity = c.msi.user_assigned_identities.create_or_update(
        RG, "id-persist", Identity(location="westeurope")
    )
    scope = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}"
    role = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/r"
    principal, name = str(uuid.uuid4()), str(uuid.uuid4())
    c.roles.role_assignments.create(
        scope, name, RoleAssignmentCreateParameters(role_definition_id=role, principal_id=principal)
    )
    entry = AccessPolicyEntry(
        tenant_id=tenant, object_id=principal, permissions=Permissions(secrets=["get"])
    )
    params = VaultAccessPolicyParameters(
        properties=VaultAccessPolicyProperties(access_policies=[entry])
    )
    c.vaults.vaults.update_access_policy(RG, "kv-persist", "add", params)
    return ArmWritten(ip.ip_address or "", identity.client_id or "", name, principal)


def check_arm(c: Clients, w: ArmWritten) -> None:
    """Everything :func:`write_arm` wrote, and the registered cluster, read back the same."""
    creds = c.aks.managed_clusters.list_cluster_admin_credentials(RG, "aks-persist")
    assert (creds.kubeconfigs or [])[0].value == KUBECONFIG.encode()
    assert c.network.public_ip_addresses.get(RG, "pip").ip_address == w.ip
    assert c.msi.user_assigned_identities.get(RG, "id-persist").client_id == w.identity_client_id
    scope = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RG}"
    assert c.roles.role_assignments.get(scope, w.role_name).principal_id == w.principal
    policies = c.vaults.vaults.get(RG, "kv-persist").properties.access_policies or []
    assert [list(p.permissions.secrets or []) for p in policies if p.object_id == w.principal] == [
        ["get"]
    ]


def test_state_and_ca_survive_an_in_process_restart(tmp_path: Path) -> None:
    first = new_emulator(tmp_path, lro_retry_after_ms=10, pending_polls=0).start()
    url, port, ca = first.url, first.port, first.ca_bundle.read_bytes()
    clients = Clients(url, first.ca_bundle, first.tenant_id)
    try:
        first.register_cluster(SUBSCRIPTION, RG, "aks-persist", admin_kubeconfig=KUBECONFIG)
        first.register_vault(SUBSCRIPTION, RG, "kv-persist")
        first.register_client("other-app", "other-secret")
        vault, arm = write_vault(clients), write_arm(clients, first.tenant_id)
        first.stop()

        state = tmp_path / STATE_FILE
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
        saved = json.loads(state.read_text())
        assert saved["format"] == 1
        assert "BEGIN" not in state.read_text()  # keys are base64 DER, not PEM

        second = new_emulator(
            tmp_path, port=port, lro_retry_after_ms=10, clients={"new-app": "new-secret"}
        ).start()
        try:
            assert second.url == url
            assert second.ca_bundle.read_bytes() == ca  # clients keep trusting the same CA
            check_vault(clients, vault)
            check_arm(clients, arm)
            tokens = [e for e in second.requests_log() if e["path"].endswith("/token")]
            assert tokens == []  # the token issued before the restart is still honoured
            with ClientSecretCredential(
                second.tenant_id, "other-app", "other-secret", authority=second.url,
                disable_instance_discovery=True, connection_verify=str(second.ca_bundle),
            ) as other:  # fmt: skip
                assert other.get_token("https://vault.azure.net/.default").token
            with ClientSecretCredential(
                second.tenant_id, "new-app", "new-secret", authority=second.url,
                disable_instance_discovery=True, connection_verify=str(second.ca_bundle),
            ) as new:  # fmt: skip  # the constructor's clients are kept through the restore
                assert new.get_token("https://vault.azure.net/.default").token
        finally:
            second.stop()
    finally:
        first.stop()
        clients.close()


def test_an_unreadable_state_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    emu = new_emulator(tmp_path)
    with pytest.raises(RuntimeError, match="Remove that file"):
        emu.start()
    emu.stop()


def test_tls_files_are_reused_only_while_they_fit(tmp_path: Path) -> None:
    files = load_or_generate(tmp_path)
    ca = files.ca_cert.read_bytes()
    assert load_or_generate(tmp_path).ca_cert.read_bytes() == ca  # reused
    now = dt.datetime.now(dt.UTC)
    hosts = ("127.0.0.1", "localhost")
    assert reusable_problem(files, hosts, now) is None
    assert "expire" in (reusable_problem(files, hosts, now + dt.timedelta(days=40)) or "")
    assert "does not name" in (reusable_problem(files, (*hosts, "vault.local"), now) or "")
    other = certs.write_server_tls(tmp_path / "other", ca_name="another CA")
    files.server_key.write_bytes(other.key.read_bytes())
    assert "does not match" in (reusable_problem(files, hosts, now) or "")
    assert load_or_generate(tmp_path).ca_cert.read_bytes() != ca  # made afresh
    files.ca_cert.write_bytes(other.ca_cert.read_bytes())
    assert "do not belong together" in (reusable_problem(files, hosts, now) or "")


# -- a real process, stopped with SIGTERM or killed with SIGKILL ---------------------------------


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path)
    processes.stop(processes.running_under(str(tmp_path)))


def _start(state: Path, marker: str, port: int | None = None) -> EmulatorAdmin:
    return start_emulator_process(state, marker=marker, config=CONFIG, port=port)


def _tenant(state: Path) -> str:
    return str(json.loads((state / "emulator.json").read_text())["tenant_id"])


def _saved_names(state: Path) -> set[str]:
    try:
        saved = json.loads((state / STATE_FILE).read_text())
    except (OSError, ValueError):
        return set()
    parts = [saved["secrets"]["live"], saved["certificates"]["live"], saved["keys"]["live"]]
    return {item["name"] for part in parts for item in part}


def _wait_until_saved(state: Path, names: set[str], timeout: float = 30) -> None:
    """Wait until the background writer has saved ``names`` (no stop, no final write)."""
    deadline = time.monotonic() + timeout
    while not names <= _saved_names(state):
        assert time.monotonic() < deadline, f"never saved: {names - _saved_names(state)}"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_state_survives_a_process_restart(tmp_path: Path, marker: str, sig: signal.Signals) -> None:
    state = tmp_path / "azure"
    first = _start(state, marker)
    port, ca = int(first.url.rsplit(":", 1)[1]), first.ca_bundle.read_bytes()
    clients = Clients(first.url, first.ca_bundle, _tenant(state))
    try:
        first.register_cluster(SUBSCRIPTION, RG, "aks-persist", admin_kubeconfig=KUBECONFIG)
        vault = write_vault(clients)
        if sig == signal.SIGKILL:
            # No final write: what the background writer saved before the kill is what is left.
            # A snapshot with the object written last holds everything written before it.
            clients.secrets.set_secret("written-last", "x")
            _wait_until_saved(state, {"written-last"})
        assert first.pid is not None
        os.killpg(first.pid, sig)  # its group: key workers included, as when a machine stops
        deadline = time.monotonic() + 15
        while processes.is_running(first.pid, marker):
            assert time.monotonic() < deadline, "the emulator did not exit"
            time.sleep(0.05)

        second = _start(state, marker, port=port)
        assert second.url == first.url
        assert second.ca_bundle.read_bytes() == ca
        check_vault(clients, vault)
        assert [e for e in second.requests_log() if e["path"].endswith("/token")] == []
        check_arm_cluster(clients)
        processes.stop([(second.pid or 0, marker)])
    finally:
        clients.close()


def check_arm_cluster(c: Clients) -> None:
    creds = c.aks.managed_clusters.list_cluster_admin_credentials(RG, "aks-persist")
    assert (creds.kubeconfigs or [])[0].value == KUBECONFIG.encode()
