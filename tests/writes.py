"""What a run wrote, as the tests count it: successful Key Vault object writes (the emulator's
request log) and the clusters' writes by the admin user (the API servers' audit logs)."""

from __future__ import annotations

from sandbox import kube
from sandbox.azure import AzureEmulator

WRITES = frozenset({"PUT", "POST", "PATCH", "DELETE"})
"""The HTTP methods that change something."""
VAULT_OBJECTS = ("/secrets", "/certificates", "/keys")


def vault_writes(emulator: AzureEmulator) -> list[str]:
    """``METHOD path`` of every successful write to a vault object in the emulator's log."""
    return [
        f"{r['method']} {r['path']}" for r in emulator.requests_log()
        if r["method"] in WRITES and r["status"] < 400 and r["path"].startswith(VAULT_OBJECTS)
    ]  # fmt: skip


def cluster_writes(clusters: list[kube.LocalCluster]) -> list[str]:
    """Every write of the admin user to ``clusters``, in audit order per cluster."""
    return [str(w) for c in clusters for w in kube.audit_writes(c, user="admin")]
