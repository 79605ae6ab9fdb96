"""The request log records bodies and headers when asked, for leak tests; never by default."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.keyvault.secrets import SecretClient

from sandbox.azure import AzureEmulator
from tests.emulator_fixtures import emulator_credential, new_emulator

pytestmark = pytest.mark.emulator


@pytest.fixture
def recording(emulator: AzureEmulator) -> Iterator[AzureEmulator]:
    emulator.record_bodies(True)
    yield emulator
    emulator.record_bodies(False)


def test_bodies_are_not_recorded_by_default(
    emulator: AzureEmulator, secret_client: SecretClient
) -> None:
    secret_client.set_secret("quiet", "v")
    entry = [e for e in emulator.requests_log() if e["path"] == "/secrets/quiet"][-1]
    assert not {"request_body", "response_body", "request_headers"} & set(entry)


def test_recorded_entries_carry_bodies_and_headers_without_the_token(
    recording: AzureEmulator, secret_client: SecretClient
) -> None:
    secret_client.set_secret("recorded", "the-value")
    entry = [e for e in recording.requests_log() if e["path"] == "/secrets/recorded"][-1]
    assert json.loads(entry["request_body"])["value"] == "the-value"
    assert json.loads(entry["response_body"])["value"] == "the-value"
    assert entry["request_body_encoding"] == entry["response_body_encoding"] == "utf-8"
    headers = {k.lower(): v for k, v in entry["request_headers"].items()}
    assert headers["authorization"] == "Bearer"  # the scheme only, never the token
    assert headers["content-type"].startswith("application/json")


def test_a_body_that_is_not_utf8_is_recorded_as_base64(recording: AzureEmulator) -> None:
    raw = b"\xff\xfe\x00binary"
    requests.put(
        f"{recording.url}/secrets/binary",
        params={"api-version": "7.6"},
        data=raw,
        verify=str(recording.ca_bundle),
        timeout=5,
    )
    (entry,) = [e for e in recording.requests_log() if e["path"] == "/secrets/binary"]
    assert entry["status"] == 401  # no token: the challenge
    assert entry["request_body_encoding"] == "base64"
    assert base64.b64decode(entry["request_body"]) == raw
    assert "headers" not in entry["response_body"]


def test_the_admin_switch_and_the_constructor_argument(tmp_path: Path) -> None:
    with new_emulator(tmp_path, record_bodies=True) as emu:
        verify = str(emu.ca_bundle)
        credential = emulator_credential(emu)
        client = SecretClient(emu.url, credential, connection_verify=verify)
        client.set_secret("on", "1")
        switch = requests.put(
            f"{emu.url}/_emulator/requests", json={"bodies": False}, verify=verify, timeout=5
        )
        assert switch.status_code == 200
        client.set_secret("off", "2")
        bad = requests.put(
            f"{emu.url}/_emulator/requests", json={"bodies": "yes"}, verify=verify, timeout=5
        )
        assert bad.status_code == 400
        entries = {e["path"]: e for e in emu.requests_log()}
        assert "request_body" in entries["/secrets/on"]
        assert "request_body" not in entries["/secrets/off"]
        assert all(not p.startswith("/_emulator") for p in entries)
        client.close()
        credential.close()
