"""Entra ID client credentials: only registered applications, with one of their secrets."""

from __future__ import annotations

import uuid

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError

from sandbox.azure import AzureEmulator
from tests.emulator_fixtures import CLIENT_ID, CLIENT_SECRET, emulator_credential

pytestmark = pytest.mark.emulator
VAULT_SCOPE = "https://vault.azure.net/.default"


def _token_endpoint(emu: AzureEmulator) -> str:
    return f"{emu.url}/{emu.tenant_id}/oauth2/v2.0/token"


def test_the_registered_secret_gets_a_token(emulator: AzureEmulator) -> None:
    with emulator_credential(emulator, CLIENT_SECRET) as credential:
        assert credential.get_token(VAULT_SCOPE).token.startswith("emu.")


def test_an_unknown_client_is_unauthorized_client(emulator: AzureEmulator) -> None:
    stranger = str(uuid.uuid4())
    with (
        emulator_credential(emulator, CLIENT_SECRET, client_id=stranger) as credential,
        pytest.raises(ClientAuthenticationError, match="AADSTS700016") as err,
    ):
        credential.get_token(VAULT_SCOPE)
    assert f"Application with identifier '{stranger}' was not found" in str(err.value)
    reply = requests.post(
        _token_endpoint(emulator),
        data={"grant_type": "client_credentials", "client_id": stranger, "client_secret": "x"},
        verify=str(emulator.ca_bundle),
        timeout=5,
    )
    assert (reply.status_code, reply.json()["error"]) == (400, "unauthorized_client")
    assert reply.json()["error_codes"] == [700016]


def test_a_wrong_secret_is_invalid_client(emulator: AzureEmulator) -> None:
    with (
        emulator_credential(emulator, "not-" + CLIENT_SECRET) as credential,
        pytest.raises(ClientAuthenticationError, match="AADSTS7000215"),
    ):
        credential.get_token(VAULT_SCOPE)
    reply = requests.post(
        _token_endpoint(emulator),
        data={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "x"},
        verify=str(emulator.ca_bundle),
        timeout=5,
    )
    assert (reply.status_code, reply.json()["error"]) == (401, "invalid_client")


def test_registering_adds_a_secret_in_process_and_over_the_admin_api(
    emulator: AzureEmulator,
) -> None:
    app = str(uuid.uuid4())
    emulator.register_client(app, "first")
    reply = requests.put(
        f"{emulator.url}/_emulator/clients/{app}",
        json={"secret": "second"},
        verify=str(emulator.ca_bundle),
        timeout=5,
    )
    assert reply.status_code == 200
    for secret in ("first", "second"):  # an app registration holds several secrets
        with emulator_credential(emulator, secret, client_id=app) as credential:
            assert credential.get_token(VAULT_SCOPE).token
    empty = requests.put(
        f"{emulator.url}/_emulator/clients/{app}",
        json={"secret": ""},
        verify=str(emulator.ca_bundle),
        timeout=5,
    )
    assert empty.status_code == 400
    assert all("/_emulator/" not in e["path"] for e in emulator.requests_log())


def test_a_client_assertion_is_accepted_for_registered_clients_only(
    emulator: AzureEmulator,
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": "header.payload.signature",
        "scope": VAULT_SCOPE,
    }
    verify = str(emulator.ca_bundle)
    known = requests.post(
        _token_endpoint(emulator), data={**form, "client_id": CLIENT_ID}, verify=verify, timeout=5
    )
    assert known.status_code == 200
    unknown = requests.post(
        _token_endpoint(emulator),
        data={**form, "client_id": str(uuid.uuid4())},
        verify=verify,
        timeout=5,
    )
    assert unknown.status_code == 400
    assert unknown.json()["error_codes"] == [700016]
