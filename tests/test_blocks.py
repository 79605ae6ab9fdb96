"""Blocks round-trip through a real Prefect server, and never show a secret in its API."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from blocks import AksCluster, AzureCredentials, KeyVault, forget_blocks, load_block
from meshflow.errors import NotFoundError
from sandbox.prefect_server import PrefectServer

SECRET = "sp-secret-value-do-not-show"


def _creds(**overrides: Any) -> AzureCredentials:
    values: dict[str, Any] = {
        "tenant_id": "t", "client_id": "c", "client_secret": SecretStr(SECRET),
        "authority_host": "https://127.0.0.1:1", "arm_endpoint": "https://127.0.0.1:1",
    }  # fmt: skip
    return AzureCredentials(**(values | overrides))


def _api_get(server: PrefectServer, path: str) -> Any:
    with urllib.request.urlopen(f"{server.api_url}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def test_block_types_are_registered(prefect_server: PrefectServer) -> None:
    slugs = {t["slug"] for t in _api_get_post(prefect_server, "/block_types/filter")}
    assert {"meshflow-azure-credentials", "meshflow-key-vault", "meshflow-aks-cluster"} <= slugs


def _api_get_post(server: PrefectServer, path: str) -> Any:
    req = urllib.request.Request(
        f"{server.api_url}{path}", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_credentials_round_trip_with_the_secret_masked_in_the_api(
    prefect_server: PrefectServer,
) -> None:
    block_id = _creds().save("rt-creds", overwrite=True)
    loaded = AzureCredentials.load("rt-creds")
    assert loaded.client_secret is not None
    assert loaded.client_secret.get_secret_value() == SECRET
    raw = _api_get(prefect_server, f"/block_documents/{block_id}")
    assert SECRET not in json.dumps(raw)
    assert raw["data"]["client_secret"] == "********"


def test_nested_blocks_round_trip_and_keep_the_secret_hidden(
    prefect_server: PrefectServer,
) -> None:
    creds = _creds()
    creds.save("rt-nested-creds", overwrite=True)
    kv_id = KeyVault(
        vault_name="kv1", vault_url="https://127.0.0.1:1/vaults/kv1", credentials=creds
    ).save("rt-kv", overwrite=True)
    AksCluster(
        subscription_id="s", resource_group="rg", cluster_name="one", region="local",
        credentials=creds,
    ).save("rt-aks", overwrite=True)  # fmt: skip
    kv = KeyVault.load("rt-kv")
    aks = AksCluster.load("rt-aks")
    assert kv.url == "https://127.0.0.1:1/vaults/kv1"
    assert aks.credentials.client_secret is not None
    assert aks.credentials.client_secret.get_secret_value() == SECRET
    listed = _api_get_post(prefect_server, "/block_documents/filter")
    assert SECRET not in json.dumps(listed)
    assert SECRET not in json.dumps(_api_get(prefect_server, f"/block_documents/{kv_id}"))


def test_load_block_reads_each_block_once_per_window_and_per_server(
    prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import blocks

    kv = KeyVault(
        vault_name="first", vault_url="https://127.0.0.1:1/vaults/v", credentials=_creds()
    )
    kv.save("reuse-kv", overwrite=True)
    forget_blocks()
    first = load_block(KeyVault, "reuse-kv")
    kv.model_copy(update={"vault_name": "second"}).save("reuse-kv", overwrite=True)
    assert load_block(KeyVault, "reuse-kv") is first  # reused within the window
    monkeypatch.setattr(blocks._LOADED, "ttl", 0.0)  # the window is the memo's
    assert load_block(KeyVault, "reuse-kv").vault_name == "second"  # window over: read again
    monkeypatch.setattr(blocks, "BLOCK_REUSE_SECONDS", 60.0)
    assert load_block(KeyVault, "reuse-kv").vault_name == "second"
    kv.save("reuse-kv", overwrite=True)
    forget_blocks()
    assert load_block(KeyVault, "reuse-kv").vault_name == "first"  # forgotten: read again
    # Another server is another key: its (missing) block is not served from this one's.
    with (
        temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}),
        pytest.raises(httpx.ConnectError),
    ):
        load_block(KeyVault, "reuse-kv")


def test_blocks_build_clients_for_their_endpoints() -> None:
    creds = _creds(ca_bundle="/etc/meshflow/ca.pem")
    aks = AksCluster(
        subscription_id="s", resource_group="rg", cluster_name="one", region="r", credentials=creds
    )
    client = aks.container_service_client()
    assert client._config.subscription_id == "s"
    assert creds.arm_kwargs()["base_url"] == "https://127.0.0.1:1"
    assert creds.transport_kwargs() == {"connection_verify": "/etc/meshflow/ca.pem"}
    kv = KeyVault(vault_name="kv1", credentials=creds)
    assert kv.url == "https://kv1.vault.azure.net"
    assert kv.secret_client().vault_url == "https://kv1.vault.azure.net"


@pytest.mark.parametrize("missing", ["tenant_id", "client_id", "client_secret"])
def test_service_principal_needs_all_three_fields(missing: str) -> None:
    with pytest.raises(ValidationError, match=f"needs {missing}"):
        _creds(**{missing: None})


def test_workload_identity_needs_no_secret() -> None:
    creds = AzureCredentials(auth="workload-identity", tenant_id="t", client_id="c")
    assert creds.client_secret is None


def test_read_ahead_loads_what_exists_and_leaves_errors_to_the_load_that_needs_it(
    prefect_server: PrefectServer,
) -> None:
    from blocks import read_ahead

    kv = KeyVault(
        vault_name="ahead", vault_url="https://127.0.0.1:1/vaults/v", credentials=_creds()
    )
    kv.save("ahead-kv", overwrite=True)
    forget_blocks()
    read_ahead(KeyVault, ["no-such-block", "ahead-kv"])  # the missing one does not stop it
    kv.model_copy(update={"vault_name": "changed"}).save("ahead-kv", overwrite=True)
    assert load_block(KeyVault, "ahead-kv").vault_name == "ahead"  # the block read ahead
    with pytest.raises(
        NotFoundError, match=r"block .no-such-block. of type .Meshflow Key Vault. does not exist"
    ):
        load_block(KeyVault, "no-such-block")
    forget_blocks()


def test_vault_facts_come_from_the_block_and_a_missing_tenant_is_named(
    prefect_server: PrefectServer,
) -> None:
    from tasks.keyvault import KeyVaultError, vault_facts

    KeyVault(vault_name="facts", tenant_id="tenant-a", credentials=_creds()).save(
        "facts-kv", overwrite=True
    )
    forget_blocks()
    facts = vault_facts("facts-kv")
    assert (facts.vault_name, facts.tenant_id) == ("facts", "tenant-a")
    # No tenant on the vault: the credentials' tenant is the vault's.
    KeyVault(vault_name="facts", credentials=_creds()).save("facts-kv", overwrite=True)
    forget_blocks()
    assert vault_facts("facts-kv").tenant_id == "t"
    ambient = AzureCredentials(auth="default")  # the tenant is whatever the machine has
    KeyVault(vault_name="facts", credentials=ambient).save("facts-kv", overwrite=True)
    forget_blocks()
    with pytest.raises(KeyVaultError, match="'facts-kv': set tenant_id"):
        vault_facts("facts-kv")
    forget_blocks()
