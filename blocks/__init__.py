"""Prefect blocks: credentials and connections, nothing else.

Register the block types with ``prefect block register -m blocks``. Each block builds the SDK
clients for its service, so tasks never assemble endpoints or credentials themselves, and the
sandbox differs from Azure only in the values saved in these blocks.
"""

from collections.abc import Iterable
from typing import TypeVar, cast

from prefect.blocks.core import Block
from prefect.settings import PREFECT_API_URL

from blocks.aks import AksCluster
from blocks.azure import AzureCredentials
from blocks.keyvault import KeyVault
from blocks.runtime import RUNTIME, Memo
from meshflow.errors import NotFoundError

__all__ = [
    "AksCluster",
    "AzureCredentials",
    "KeyVault",
    "block_name",
    "forget_blocks",
    "load_block",
    "missing_block",
    "missing_blocks",
    "read_ahead",
]

B = TypeVar("B", bound=Block)

BLOCK_REUSE_SECONDS = 15.0
"""How long a loaded block is reused in this process before it is read from the API again."""

_LOADED: Memo[Block] = RUNTIME.memo("blocks", ttl=BLOCK_REUSE_SECONDS)


def load_block(block_type: type[B], name: str) -> B:
    """Load a saved block document, synchronously even when called from async code.

    A block read in this process in the last ``BLOCK_REUSE_SECONDS`` is reused (per API URL;
    concurrent first reads make one call; why: ``docs/design.md``). A block edited in the UI is
    seen by runs that start after that window; :func:`forget_blocks` drops them at once.

    Raises:
        NotFoundError: the server has no such block of that type (the message says what to do).
    """
    key = (str(PREFECT_API_URL.value() or ""), block_type.get_block_type_slug(), name)

    def load() -> Block:
        try:
            return cast(B, block_type.load(name, _sync=True))  # type: ignore[call-arg]
        except ValueError as exc:  # Prefect: "Unable to find block document named ..."
            raise missing_block(block_type, name) from exc

    return cast(B, _LOADED.get(key, load))


def missing_block(block_type: type[Block], name: str) -> NotFoundError:
    """The error for a block document that the Prefect server does not have."""
    kind = block_type.get_block_type_name()
    api = PREFECT_API_URL.value() or "the ephemeral Prefect API (PREFECT_API_URL is not set)"
    return NotFoundError(
        f"Prefect block {name!r} of type {kind!r} does not exist on {api}; save the "
        "environment's blocks with `meshflow env init <environment>`, create it in the Prefect "
        f"UI (Blocks, +, {kind}), or for the sandbox run `meshflow sandbox up`",
        system="Prefect", target=str(api), object=name,
    )  # fmt: skip


def missing_blocks(required: Iterable[tuple[type[Block], str]]) -> list[str]:
    """One line per required ``(type, name)`` block that cannot be loaded, saying what to do.

    A block saved under the name but as another of meshflow's types is named as such.
    """
    from prefect.blocks.system import Secret

    known: list[type[Block]] = [AzureCredentials, KeyVault, AksCluster, Secret]
    problems = []
    for block_type, name in dict.fromkeys(required):
        try:
            load_block(block_type, name)
            continue
        except NotFoundError as exc:
            problem = str(exc)
        others = []
        for other in known:
            if other is block_type:
                continue
            try:
                other.load(name, _sync=True)  # type: ignore[call-arg]
            except ValueError:
                continue
            others.append(repr(other.get_block_type_name()))
        if others:
            wanted = repr(block_type.get_block_type_name())
            problem = (
                f"Prefect block {name!r} is a {' and a '.join(others)} block, not a {wanted}; "
                f"point the mesh description at a {wanted} block, or save one under that name"
            )
        problems.append(problem)
    return problems


def block_name(block: Block) -> str:
    """The name a block was saved (or loaded) under, or "" for an unsaved or nested one."""
    return str(getattr(block, "_block_document_name", None) or "")


def read_ahead(block_type: type[B], names: Iterable[str]) -> None:
    """Read blocks now, so that :func:`load_block` reuses them when a task needs them.

    For the time a flow waits anyway; a block that fails to load here is left for the load
    that needs it, which raises the error where it belongs.
    """
    for name in names:
        try:
            load_block(block_type, name)
        except Exception:  # noqa: S112 - the task that needs the block reports it
            continue


def forget_blocks() -> None:
    """Read every block from the API again on its next use (e.g. after saving blocks)."""
    _LOADED.forget()
