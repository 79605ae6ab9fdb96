"""AKS cluster connection block."""

from __future__ import annotations

from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.network import NetworkManagementClient
from prefect.blocks.core import Block
from pydantic import Field

from blocks.azure import AzureCredentials, shared


class AksCluster(Block):
    """Where an AKS cluster is, and who may ask ARM for its credentials."""

    _block_type_name = "Meshflow AKS Cluster"
    _description = "An AKS cluster of the mesh: ARM coordinates and credentials."

    subscription_id: str = Field(description="Azure subscription ID.")
    resource_group: str = Field(description="Resource group of the cluster.")
    cluster_name: str = Field(description="AKS resource name.")
    region: str = Field(description="Azure region, e.g. westeurope.")
    credentials: AzureCredentials

    def container_service_client(self) -> ContainerServiceClient:
        """The process's ARM client for ``Microsoft.ContainerService`` (do not close)."""
        creds = self.credentials
        return shared(
            ("aks", self.subscription_id, creds.cache_key()),
            lambda: ContainerServiceClient(
                creds.get_credential(), self.subscription_id, **creds.arm_kwargs()
            ),
        )

    def network_client(self, subscription_id: str | None = None) -> NetworkManagementClient:
        """The process's ARM client for ``Microsoft.Network`` (the cluster's App Gateway)."""
        sub, creds = subscription_id or self.subscription_id, self.credentials
        return shared(
            ("network", sub, creds.cache_key()),
            lambda: NetworkManagementClient(creds.get_credential(), sub, **creds.arm_kwargs()),
        )

    def identity_client(self, subscription_id: str | None = None) -> ManagedServiceIdentityClient:
        """The process's ARM client for user-assigned managed identities."""
        sub, creds = subscription_id or self.subscription_id, self.credentials
        return shared(
            ("msi", sub, creds.cache_key()),
            lambda: ManagedServiceIdentityClient(creds.get_credential(), sub, **creds.arm_kwargs()),
        )

    def authorization_client(
        self, subscription_id: str | None = None
    ) -> AuthorizationManagementClient:
        """The process's ARM client for role assignments."""
        sub, creds = subscription_id or self.subscription_id, self.credentials
        return shared(
            ("authorization", sub, creds.cache_key()),
            lambda: AuthorizationManagementClient(
                creds.get_credential(), sub, **creds.arm_kwargs()
            ),
        )
