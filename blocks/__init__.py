"""Prefect blocks: credentials and connections, nothing else.

Register the block types with ``prefect block register -m blocks``. Each block builds the SDK
clients for its service, so tasks never assemble endpoints or credentials themselves, and the
sandbox differs from Azure only in the values saved in these blocks.
"""

from blocks.aks import AksCluster
from blocks.azure import AzureCredentials
from blocks.keyvault import KeyVault

__all__ = ["AksCluster", "AzureCredentials", "KeyVault"]
