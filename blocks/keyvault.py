"""Key Vault connection block."""

from __future__ import annotations

from azure.keyvault.certificates import CertificateClient
from azure.keyvault.secrets import SecretClient
from prefect.blocks.core import Block
from pydantic import Field

from blocks.azure import AzureCredentials, shared


class KeyVault(Block):
    """An Azure Key Vault that holds the mesh's CA material and TLS certificates."""

    _block_type_name = "Meshflow Key Vault"
    _description = "Azure Key Vault holding the Istio plug-in CA and ingress certificates."

    vault_name: str = Field(description="Key Vault name (3-24 characters).")
    vault_url: str | None = Field(
        default=None, description="Override of https://<vault_name>.vault.azure.net (sandbox)."
    )
    tenant_id: str | None = Field(
        default=None, description="Tenant of the vault (for the CSI SPC)."
    )
    credentials: AzureCredentials

    @property
    def url(self) -> str:
        """The vault's data-plane URL."""
        return (self.vault_url or f"https://{self.vault_name}.vault.azure.net").rstrip("/")

    def secret_client(self) -> SecretClient:
        """The process's Key Vault secrets client for this vault and identity (do not close)."""
        creds = self.credentials
        return shared(
            ("secrets", self.url, creds.cache_key()),
            lambda: SecretClient(self.url, creds.get_credential(), **creds.transport_kwargs()),
        )

    def certificate_client(self) -> CertificateClient:
        """The process's Key Vault certificates client for this vault and identity."""
        creds = self.credentials
        return shared(
            ("certificates", self.url, creds.cache_key()),
            lambda: CertificateClient(self.url, creds.get_credential(), **creds.transport_kwargs()),
        )
