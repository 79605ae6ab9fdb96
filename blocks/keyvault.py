"""Key Vault connection block."""

from __future__ import annotations

from azure.keyvault.certificates import CertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient
from azure.keyvault.secrets import SecretClient
from azure.mgmt.keyvault import KeyVaultManagementClient
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
    subscription_id: str | None = Field(
        default=None, description="The vault's subscription (for access policies: ingress)."
    )
    resource_group: str | None = Field(
        default=None, description="The vault's resource group (for access policies: ingress)."
    )
    hsm_keys: bool = Field(
        default=True,
        description="Make the root CA key HSM-protected (RSA-HSM): needs a premium vault. "
        "Off: a software-protected, still non-exportable key (standard vaults).",
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

    def key_client(self) -> KeyClient:
        """The process's Key Vault keys client for this vault and identity."""
        creds = self.credentials
        return shared(
            ("keys", self.url, creds.cache_key()),
            lambda: KeyClient(self.url, creds.get_credential(), **creds.transport_kwargs()),
        )

    def crypto_client(self, key_id: str) -> CryptographyClient:
        """The process's client for the cryptographic operations of key version ``key_id``.

        Its first operation reads the key's public part (one call per process); signing then
        happens in the vault.
        """
        creds = self.credentials
        return shared(
            ("crypto", key_id, creds.cache_key()),
            lambda: CryptographyClient(key_id, creds.get_credential(), **creds.transport_kwargs()),
        )

    def management_client(self) -> KeyVaultManagementClient:
        """The process's ARM client for this vault's resource (access policies).

        Raises:
            ValueError: the block has no ``subscription_id`` and ``resource_group``.
        """
        if not self.subscription_id or not self.resource_group:
            raise ValueError(
                f"Key Vault block for {self.vault_name!r} has no subscription_id and "
                "resource_group; set them (the ingress stage gives the App Gateway access)"
            )
        sub, creds = self.subscription_id, self.credentials
        return shared(
            ("keyvault-mgmt", sub, creds.cache_key()),
            lambda: KeyVaultManagementClient(creds.get_credential(), sub, **creds.arm_kwargs()),
        )
