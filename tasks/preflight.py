"""Checks a flow makes before its first write: are the Prefect blocks it needs there?"""

from __future__ import annotations

from collections.abc import Sequence

from prefect.blocks.core import Block

from blocks import missing_blocks
from meshflow.errors import NotFoundError
from tasks.blocking import blocking_task


def require_blocks(required: Sequence[tuple[type[Block], str]]) -> int:
    """Load every ``(type, name)`` block; how many there are. A read.

    Raises:
        NotFoundError: one line per block that is missing or of another type, with what to do.
    """
    problems = missing_blocks(required)
    if problems:
        raise NotFoundError("\n".join(problems), system="Prefect")
    return len(dict.fromkeys(required))


check_blocks = blocking_task("check-blocks")(require_blocks)
