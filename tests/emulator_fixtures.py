"""Pytest fixtures for the Azure emulator: one in-process emulator per session, real SDK clients.

``azure_emulator`` is session scoped; ``emulator`` is the same object with faults and the request
log cleared around each test. Client fixtures are configured exactly as production code would be,
changed only by endpoint and CA bundle (see ``sandbox.azure``'s docstring for the recipe). The
emulator knows one client application, ``CLIENT_ID`` with ``CLIENT_SECRET``, as Entra knows an
app registration; :func:`new_emulator` makes more emulators that know it too.

``sleeps`` records the waits a test's clients and emulator ask for, instead of waiting: tests
assert what was waited for (a ``Retry-After`` honoured, a delay rule applied, a key's making
time charged), never how long the wall clock took.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.pipeline.transport import HttpTransport
from azure.identity import ClientSecretCredential
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.network import NetworkManagementClient

import sandbox.azure.emulator
import sandbox.azure.x509util
from sandbox.azure import AzureEmulator

SUBSCRIPTION = "6f1d2c3b-0a9e-4f8d-8c7b-6a5e4d3c2b1a"
CLIENT_ID = "11111111-2222-4333-8444-555555555555"
CLIENT_SECRET = "emulator-test-client-secret"


def new_emulator(
    state_dir: Path, *, clients: dict[str, str] | None = None, **kwargs: Any
) -> AzureEmulator:
    """An (unstarted) emulator in ``state_dir`` that knows ``CLIENT_ID`` (and ``clients``)."""
    return AzureEmulator(state_dir, clients={CLIENT_ID: CLIENT_SECRET, **(clients or {})}, **kwargs)


@pytest.fixture(scope="session")
def azure_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureEmulator]:
    """A running in-process emulator for the whole session."""
    with new_emulator(tmp_path_factory.mktemp("azure-emulator"), lro_retry_after_ms=10) as emu:
        yield emu


@pytest.fixture
def emulator(azure_emulator: AzureEmulator) -> Iterator[AzureEmulator]:
    """The session emulator with no fault rules and an empty request log."""
    azure_emulator.clear_faults()
    azure_emulator.clear_log()
    yield azure_emulator
    azure_emulator.clear_faults()


@dataclass
class Sleeps:
    """The waits asked for during a test, in order, by who asked; none is slept."""

    sdk: list[float] = field(default_factory=list)
    """Azure SDK clients (every wait goes through their transport): retry backoff,
    ``Retry-After``, LRO poll intervals."""
    emulator: list[float] = field(default_factory=list)
    """The in-process emulator: fault rules' ``delay_ms``, a made-ahead key's making time."""


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    """Record the SDK's and the in-process emulator's waits instead of waiting."""
    recorded = Sleeps()

    def sdk_sleep(transport: HttpTransport, duration: float) -> None:
        recorded.sdk.append(duration)

    emulator_time = types.SimpleNamespace(**vars(time))
    emulator_time.sleep = recorded.emulator.append
    monkeypatch.setattr(HttpTransport, "sleep", sdk_sleep)
    for module in (sandbox.azure.emulator, sandbox.azure.x509util):
        monkeypatch.setattr(module, "time", emulator_time)
    return recorded


def emulator_credential(
    emu: AzureEmulator, secret: str = CLIENT_SECRET, client_id: str = CLIENT_ID
) -> ClientSecretCredential:
    """A ``ClientSecretCredential`` that gets its tokens from the emulator."""
    return ClientSecretCredential(
        emu.tenant_id,
        client_id,
        secret,
        authority=emu.url,
        disable_instance_discovery=True,
        connection_verify=str(emu.ca_bundle),
    )


def arm_kwargs(emu: AzureEmulator) -> dict[str, Any]:
    """Keyword arguments pointing an ``azure-mgmt-*`` client at the emulator."""
    return {"base_url": emu.url, "connection_verify": str(emu.ca_bundle)}


@pytest.fixture(scope="session")
def azure_credential(azure_emulator: AzureEmulator) -> Iterator[ClientSecretCredential]:
    """A credential for the emulator's tenant."""
    with emulator_credential(azure_emulator) as credential:
        yield credential


@pytest.fixture(scope="session")
def secret_client(
    azure_emulator: AzureEmulator, azure_credential: ClientSecretCredential
) -> Iterator[SecretClient]:
    """A real ``SecretClient`` for the emulator's vault."""
    ca = str(azure_emulator.ca_bundle)
    with SecretClient(azure_emulator.url, azure_credential, connection_verify=ca) as client:
        yield client


@pytest.fixture(scope="session")
def certificate_client(
    azure_emulator: AzureEmulator, azure_credential: ClientSecretCredential
) -> Iterator[CertificateClient]:
    """A real ``CertificateClient`` for the emulator's vault."""
    ca = str(azure_emulator.ca_bundle)
    with CertificateClient(azure_emulator.url, azure_credential, connection_verify=ca) as client:
        yield client


@pytest.fixture(scope="session")
def key_client(
    azure_emulator: AzureEmulator, azure_credential: ClientSecretCredential
) -> Iterator[KeyClient]:
    """A real ``KeyClient`` for the emulator's vault."""
    ca = str(azure_emulator.ca_bundle)
    with KeyClient(azure_emulator.url, azure_credential, connection_verify=ca) as client:
        yield client


@pytest.fixture(scope="session")
def aks_client(
    azure_emulator: AzureEmulator, azure_credential: ClientSecretCredential
) -> Iterator[ContainerServiceClient]:
    """A real ``ContainerServiceClient``."""
    kwargs = arm_kwargs(azure_emulator)
    with ContainerServiceClient(azure_credential, SUBSCRIPTION, **kwargs) as client:
        yield client


@pytest.fixture(scope="session")
def network_client(
    azure_emulator: AzureEmulator, azure_credential: ClientSecretCredential
) -> Iterator[NetworkManagementClient]:
    """A real ``NetworkManagementClient``."""
    kwargs = arm_kwargs(azure_emulator)
    with NetworkManagementClient(azure_credential, SUBSCRIPTION, **kwargs) as client:
        yield client


@pytest.fixture(scope="session")
def msi_client(
    azure_emulator: AzureEmulator, azure_credential: ClientSecretCredential
) -> Iterator[ManagedServiceIdentityClient]:
    """A real ``ManagedServiceIdentityClient``."""
    kwargs = arm_kwargs(azure_emulator)
    with ManagedServiceIdentityClient(azure_credential, SUBSCRIPTION, **kwargs) as client:
        yield client


@pytest.fixture(scope="session")
def authorization_client(
    azure_emulator: AzureEmulator, azure_credential: ClientSecretCredential
) -> Iterator[AuthorizationManagementClient]:
    """A real ``AuthorizationManagementClient``."""
    kwargs = arm_kwargs(azure_emulator)
    with AuthorizationManagementClient(azure_credential, SUBSCRIPTION, **kwargs) as client:
        yield client


@pytest.fixture(scope="session")
def keyvault_mgmt_client(
    azure_emulator: AzureEmulator, azure_credential: ClientSecretCredential
) -> Iterator[KeyVaultManagementClient]:
    """A real ``KeyVaultManagementClient``."""
    kwargs = arm_kwargs(azure_emulator)
    with KeyVaultManagementClient(azure_credential, SUBSCRIPTION, **kwargs) as client:
        yield client
