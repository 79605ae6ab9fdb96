"""Azure credentials block: service principal, workload identity or the default chain."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from typing import Any, Literal, TypeVar

from azure.core.credentials import TokenCredential
from azure.identity import (
    ClientSecretCredential,
    DefaultAzureCredential,
    WorkloadIdentityCredential,
)
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from blocks.runtime import RUNTIME, Memo

AZURE_PUBLIC_ARM = "https://management.azure.com"

T = TypeVar("T")
_SHARED: Memo[Any] = RUNTIME.memo("sdk-clients")


def shared(key: Hashable, build: Callable[[], T]) -> T:
    """One instance per ``key`` in this process (kept in :mod:`blocks.runtime`).

    SDK credentials and clients are thread-safe and keep their connections and tokens, so tasks
    reuse them instead of rebuilding them.
    """
    return _SHARED.get(key, build)  # type: ignore[no-any-return]


class AzureCredentials(Block):
    """How meshflow authenticates to Azure (ARM and Key Vault).

    ``auth`` picks the credential: ``service-principal`` (tenant, client id, client secret),
    ``workload-identity`` (federated token file, as on AKS or in CI) or ``default`` (the Azure
    SDK's default chain: environment, managed identity, Azure CLI). The endpoint overrides exist
    for sovereign clouds and for the local sandbox; leave them empty for Azure public cloud.
    """

    _block_type_name = "Meshflow Azure Credentials"
    _description = "Azure identity used by meshflow for ARM and Key Vault."

    auth: Literal["service-principal", "workload-identity", "default"] = "service-principal"
    tenant_id: str | None = Field(default=None, description="Entra tenant ID.")
    client_id: str | None = Field(default=None, description="App (client) ID.")
    client_secret: SecretStr | None = Field(default=None, description="Client secret.")
    authority_host: str | None = Field(
        default=None, description="Entra authority, e.g. https://login.microsoftonline.com."
    )
    arm_endpoint: str = Field(default=AZURE_PUBLIC_ARM, description="Resource Manager URL.")
    ca_bundle: str | None = Field(
        default=None, description="PEM file of CAs to trust instead of the system store."
    )

    @model_validator(mode="after")
    def _check_auth_fields(self) -> AzureCredentials:
        if self.auth == "service-principal":
            missing = [
                f for f in ("tenant_id", "client_id", "client_secret") if not getattr(self, f)
            ]
            if missing:
                raise ValueError(
                    f"auth 'service-principal' needs {', '.join(missing)}; "
                    "or choose auth 'workload-identity' or 'default'"
                )
        return self

    def transport_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every Azure SDK client of this block gets (TLS trust)."""
        return {"connection_verify": self.ca_bundle} if self.ca_bundle else {}

    def cache_key(self) -> str:
        """Identifies equal credentials across block loads (a digest; holds no secret)."""
        secret = self.client_secret.get_secret_value() if self.client_secret else ""
        fields = (self.auth, self.tenant_id, self.client_id, secret, self.authority_host,
                  self.arm_endpoint, self.ca_bundle)  # fmt: skip
        return hashlib.sha256(repr(fields).encode()).hexdigest()

    def get_credential(self) -> TokenCredential:
        """The azure-identity credential this block describes, shared within the process.

        Credentials are thread-safe and cache their tokens, so every task of a run reuses one
        instead of asking Entra for a new token each time.
        """
        return shared(("credential", self.cache_key()), self._new_credential)

    def _new_credential(self) -> TokenCredential:
        common: dict[str, Any] = self.transport_kwargs()
        if self.authority_host:
            # A non-public authority (sandbox, sovereign cloud) cannot be checked against
            # Microsoft's instance-discovery endpoint.
            common |= {"authority": self.authority_host, "disable_instance_discovery": True}
        if self.auth == "service-principal":
            secret = self.client_secret.get_secret_value() if self.client_secret else ""
            return ClientSecretCredential(
                str(self.tenant_id), str(self.client_id), secret, **common
            )
        if self.auth == "workload-identity":
            return WorkloadIdentityCredential(
                tenant_id=self.tenant_id, client_id=self.client_id, **common
            )
        return DefaultAzureCredential(**common)

    def arm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an ``azure-mgmt-*`` client against :attr:`arm_endpoint`."""
        endpoint = self.arm_endpoint.rstrip("/")
        return {
            "base_url": endpoint,
            "credential_scopes": [f"{_scope_root(endpoint)}/.default"],
            **self.transport_kwargs(),
        }


def _scope_root(endpoint: str) -> str:
    # Tokens for ARM are requested for the public ARM resource even on the sandbox endpoint.
    return AZURE_PUBLIC_ARM if "127.0.0.1" in endpoint or "localhost" in endpoint else endpoint
