"""Checks a flow makes before its first write: are the Prefect blocks it needs there?"""

from __future__ import annotations

from collections.abc import Sequence

from prefect.blocks.core import Block

from blocks import KeyVault, load_block, missing_blocks
from meshflow.errors import InvalidError, NotFoundError
from tasks.blocking import blocking_task


def require_blocks(
    required: Sequence[tuple[type[Block], str]], vault_resource: str | None = None
) -> int:
    """Load every ``(type, name)`` block; how many there are. A read.

    ``vault_resource``: a Key Vault block that must also say where the vault's ARM resource is
    (the ingress stage adds an access policy to it).

    Raises:
        NotFoundError: one line per block that is missing or of another type, with what to do.
        InvalidError: ``vault_resource`` has no ``subscription_id`` or ``resource_group``.
    """
    problems = missing_blocks(required)
    if problems:
        raise NotFoundError("\n".join(problems), system="Prefect")
    if vault_resource is not None:
        vault = load_block(KeyVault, vault_resource)
        if not vault.subscription_id or not vault.resource_group:
            raise InvalidError(
                f"Key Vault block {vault_resource!r} has no subscription_id and resource_group: "
                "set them to the vault's ARM resource (the ingress stage gives the App Gateway's "
                "identity secret get on it), or set ingress.https: false",
                system="Prefect", target=vault_resource,
            )  # fmt: skip
    return len(dict.fromkeys(required))


check_blocks = blocking_task("check-blocks")(require_blocks)
