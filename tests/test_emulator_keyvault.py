"""Key Vault secrets, auth, TLS and fault injection, driven through the real Azure SDK clients."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets._shared import HttpChallengeCache

from sandbox.azure import AzureEmulator
from tests.emulator_fixtures import Sleeps, emulator_credential

pytestmark = pytest.mark.emulator


def _statuses(emu: AzureEmulator, path: str) -> list[int]:
    return [e["status"] for e in emu.requests_log() if e["path"] == path]


def test_challenge_flow_then_bearer(emulator: AzureEmulator) -> None:
    HttpChallengeCache.clear()
    client = SecretClient(
        emulator.url, emulator_credential(emulator), connection_verify=str(emulator.ca_bundle)
    )
    secret = client.set_secret("challenge", "v")
    assert secret.value == "v"
    log = emulator.requests_log()
    assert [(e["method"], e["status"], e["auth_header"]) for e in (log[0], log[-1])] == [
        ("PUT", 401, False),
        ("PUT", 200, True),
    ]
    token_calls = [e for e in log if e["path"].endswith("/oauth2/v2.0/token")]
    assert [e["status"] for e in token_calls] == [200]
    assert log[1]["path"] == f"/{emulator.tenant_id}/v2.0/.well-known/openid-configuration"


def test_set_get_versions_and_list(emulator: AzureEmulator, secret_client: SecretClient) -> None:
    first = secret_client.set_secret("versioned", "one", content_type="text/plain", tags={"a": "b"})
    second = secret_client.set_secret("versioned", "two")
    assert first.properties.version != second.properties.version
    assert len(second.properties.version or "") == 32
    assert second.id == f"{emulator.url}/secrets/versioned/{second.properties.version}"
    assert secret_client.get_secret("versioned").value == "two"
    old = secret_client.get_secret("versioned", first.properties.version)
    assert (old.value, old.properties.content_type, old.properties.tags) == (
        "one",
        "text/plain",
        {"a": "b"},
    )
    versions = {p.version for p in secret_client.list_properties_of_secret_versions("versioned")}
    assert versions == {first.properties.version, second.properties.version}
    for i in range(27):  # more than one 25-item page
        secret_client.set_secret(f"paged-{i}", "x")
    names = {p.name for p in secret_client.list_properties_of_secrets()}
    assert {f"paged-{i}" for i in range(27)} | {"versioned"} <= names
    pages = [e for e in emulator.requests_log() if e["path"] == "/secrets" and e["method"] == "GET"]
    assert len(pages) >= 2


def test_update_properties_and_disabled_secret(secret_client: SecretClient) -> None:
    secret_client.set_secret("updatable", "v")
    expires = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    props = secret_client.update_secret_properties(
        "updatable", content_type="application/json", tags={"k": "v"}, expires_on=expires
    )
    assert (props.content_type, props.tags, props.expires_on) == (
        "application/json",
        {"k": "v"},
        expires,
    )
    secret_client.update_secret_properties("updatable", enabled=False)
    with pytest.raises(HttpResponseError) as err:
        secret_client.get_secret("updatable")
    assert err.value.status_code == 403
    assert err.value.error is not None
    assert err.value.error.code == "Forbidden"


def test_missing_secret_is_resource_not_found(secret_client: SecretClient) -> None:
    with pytest.raises(ResourceNotFoundError) as err:
        secret_client.get_secret("does-not-exist")
    assert err.value.error is not None
    assert err.value.error.code == "SecretNotFound"


def test_soft_delete_purge_and_recover(
    emulator: AzureEmulator, secret_client: SecretClient
) -> None:
    secret_client.set_secret("deletable", "v")
    poller = secret_client.begin_delete_secret("deletable")
    poller.wait()
    deleted = poller.result()
    assert deleted.recovery_id == f"{emulator.url}/deletedsecrets/deletable"
    assert deleted.scheduled_purge_date
    assert deleted.deleted_date
    assert secret_client.get_deleted_secret("deletable").name == "deletable"
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_secret("deletable")
    with pytest.raises(ResourceExistsError):
        secret_client.set_secret("deletable", "again")
    secret_client.begin_recover_deleted_secret("deletable").wait()
    assert secret_client.get_secret("deletable").value == "v"
    secret_client.begin_delete_secret("deletable").wait()
    secret_client.purge_deleted_secret("deletable")
    assert secret_client.set_secret("deletable", "fresh").value == "fresh"


def test_admin_drop_secret(emulator: AzureEmulator, secret_client: SecretClient) -> None:
    secret_client.set_secret("droppable", "v")
    reply = requests.delete(
        f"{emulator.url}/_emulator/keyvault/any/secrets/droppable",
        verify=str(emulator.ca_bundle),
        timeout=5,
    )
    assert reply.status_code == 200
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_secret("droppable")
    with pytest.raises(ResourceNotFoundError):
        secret_client.get_deleted_secret("droppable")
    assert all(not e["path"].startswith("/_emulator") for e in emulator.requests_log())


def test_injected_429_is_retried(
    emulator: AzureEmulator, secret_client: SecretClient, sleeps: Sleeps
) -> None:
    secret_client.set_secret("throttled", "warm")  # challenge already cached
    emulator.clear_log()
    emulator.add_fault(r"^/secrets/throttled$", method="PUT", status=429, retry_after=1)
    assert secret_client.set_secret("throttled", "v").value == "v"
    assert _statuses(emulator, "/secrets/throttled") == [429, 200]
    assert sleeps.sdk == [1.0]  # between the two: the Retry-After, not the SDK's own backoff


def test_injected_503_is_retried_then_exhausted(
    emulator: AzureEmulator, secret_client: SecretClient
) -> None:
    secret_client.set_secret("flaky", "v")
    emulator.clear_log()
    emulator.add_fault(r"^/secrets/flaky/?$", method="GET", status=503, retry_after=0.05, times=2)
    assert secret_client.get_secret("flaky").value == "v"
    assert _statuses(emulator, "/secrets/flaky/") == [503, 503, 200]
    emulator.clear_log()
    emulator.add_fault(r"^/secrets/flaky/?$", status=503, retry_after=0.05, times=10)
    with pytest.raises(HttpResponseError) as err:
        secret_client.get_secret("flaky")
    assert err.value.status_code == 503
    assert _statuses(emulator, "/secrets/flaky/") == [503] * 4  # 1 try + 3 default retries


def test_slow_response(
    emulator: AzureEmulator, secret_client: SecretClient, sleeps: Sleeps
) -> None:
    secret_client.set_secret("slow", "v")
    emulator.clear_log()
    emulator.add_fault(r"^/secrets/slow", method="GET", status=None, delay_ms=300)
    assert secret_client.get_secret("slow").value == "v"
    assert sleeps.emulator == [0.3]  # the rule delayed the first read, and failed nothing
    assert secret_client.get_secret("slow").value == "v"
    assert sleeps.emulator == [0.3]  # the rule was used up: the second read was not delayed
    assert _statuses(emulator, "/secrets/slow/") == [200, 200]
    assert sleeps.sdk == []  # nothing was retried


def test_admin_faults_over_http(emulator: AzureEmulator, secret_client: SecretClient) -> None:
    secret_client.set_secret("http-fault", "v")
    verify = str(emulator.ca_bundle)
    rule = {
        "method": "GET",
        "path": "^/secrets/http-fault",
        "status": 500,
        "retry_after": 0.01,
        "times": 1,
        "delay_ms": 0,
    }
    assert requests.post(f"{emulator.url}/_emulator/faults", json=rule, verify=verify, timeout=5).ok
    assert secret_client.get_secret("http-fault").value == "v"
    log = requests.get(f"{emulator.url}/_emulator/requests", verify=verify, timeout=5).json()
    assert [
        e["status"] for e in log["requests"] if e["path"].startswith("/secrets/http-fault")
    ] == [
        200,
        500,
        200,
    ]
    assert requests.delete(f"{emulator.url}/_emulator/requests", verify=verify, timeout=5).ok
    assert emulator.requests_log() == []


def test_wrong_client_secret(emulator: AzureEmulator) -> None:
    credential = emulator_credential(emulator, secret="not-the-registered-secret")
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential.get_token("https://vault.azure.net/.default")
    HttpChallengeCache.clear()
    client = SecretClient(emulator.url, credential, connection_verify=str(emulator.ca_bundle))
    with pytest.raises(ClientAuthenticationError):
        client.get_secret("anything")


def test_unknown_token_is_rejected(emulator: AzureEmulator) -> None:
    reply = requests.get(
        f"{emulator.url}/secrets/x",
        params={"api-version": "7.6"},
        headers={"Authorization": "Bearer forged"},
        verify=str(emulator.ca_bundle),
        timeout=5,
    )
    assert reply.status_code == 401
    challenge = reply.headers["WWW-Authenticate"]
    port = emulator.port
    assert challenge == (
        f'Bearer authorization="{emulator.url}/{emulator.tenant_id}", resource="https://0.0.1:{port}"'
    )


def test_tls_is_verified(emulator: AzureEmulator, secret_client: SecretClient) -> None:
    # No connection_verify: only the system CAs are trusted. retry_total=0 skips the SDK's
    # backoff on connection errors.
    untrusting = SecretClient(emulator.url, emulator_credential(emulator), retry_total=0)
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.get_secret("x")
    ctx = ssl.create_default_context(cafile=str(emulator.ca_bundle))
    with (
        socket.create_connection(("127.0.0.1", emulator.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock,
    ):
        sans = tls_sock.getpeercert()["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in sans
    assert ("DNS", "localhost") in sans
    key = emulator.ca_bundle.parent / "server-key.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_concurrent_clients(emulator: AzureEmulator, secret_client: SecretClient) -> None:
    def work(worker: int) -> set[str]:
        return {
            secret_client.set_secret("shared", f"{worker}-{i}").properties.version or ""
            for i in range(10)
        }

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = set().union(*pool.map(work, range(8)))
    listed = {p.version for p in secret_client.list_properties_of_secret_versions("shared")}
    assert len(versions) == 80
    assert versions <= listed
