"""Azure Key Vault: secrets and certificates of the mesh.

Needs secret get/set (and certificate get/import/create for the PKI tasks) on the vault, through
an access policy or the "Key Vault Secrets Officer" / "Key Vault Certificates Officer" roles.
"""

from __future__ import annotations

import secrets
import time

from azure.core.exceptions import HttpResponseError
from prefect import task
from pydantic import BaseModel, ConfigDict

from blocks import KeyVault
from tasks.retry import TRANSIENT_RETRIES

PROBE_SECRET = "meshflow-probe"


class KeyVaultError(RuntimeError):
    """A Key Vault operation failed in a way the user must act on."""


class ProbeResult(BaseModel):
    """Outcome of a write-then-read round trip on the vault."""

    model_config = ConfigDict(frozen=True)
    vault: str
    secret: str
    version: str
    round_trip_ms: float


@task(name="probe-key-vault", **TRANSIENT_RETRIES)
def probe_key_vault(key_vault_block: str) -> ProbeResult:
    """Write a random, non-secret nonce to ``meshflow-probe`` and read it back.

    Not idempotent by design: each probe adds a secret version, proving write access.
    """
    vault = KeyVault.load(key_vault_block)
    client = vault.secret_client()
    nonce = secrets.token_hex(8)
    start = time.perf_counter()
    try:
        written = client.set_secret(PROBE_SECRET, nonce, content_type="text/plain",
                                    tags={"purpose": "meshflow access probe"})
        read = client.get_secret(PROBE_SECRET, written.properties.version)
    except HttpResponseError as exc:
        if exc.status_code in (401, 403):
            raise KeyVaultError(
                f"Key Vault {vault.vault_name!r}: secret set/get denied (HTTP {exc.status_code}); "
                "give the flow's identity secret get+set (access policy or RBAC role)"
            ) from exc
        raise
    finally:
        client.close()
    elapsed = (time.perf_counter() - start) * 1000
    if read.value != nonce:
        raise KeyVaultError(f"Key Vault {vault.vault_name!r}: probe read back a different value")
    return ProbeResult(
        vault=vault.vault_name,
        secret=PROBE_SECRET,
        version=str(written.properties.version),
        round_trip_ms=round(elapsed, 1),
    )
