"""Prefect blocks: credentials and connections, nothing else.

Register the block types with ``prefect block register -m blocks``. Each block builds the SDK
clients for its service, so tasks never assemble endpoints or credentials themselves, and the
sandbox differs from Azure only in the values saved in these blocks.
"""

from typing import TypeVar, cast

from prefect.blocks.core import Block

from blocks.aks import AksCluster
from blocks.azure import AzureCredentials
from blocks.keyvault import KeyVault

__all__ = ["AksCluster", "AzureCredentials", "KeyVault", "load_block"]

B = TypeVar("B", bound=Block)


def load_block(block_type: type[B], name: str) -> B:
    """Load a saved block document, synchronously even when called from async code."""
    return cast(B, block_type.load(name, _sync=True))  # type: ignore[call-arg]
