"""Reading YAML with libyaml's parser when PyYAML was built with it. Pure, no SDK.

``yaml.safe_load`` always uses PyYAML's pure-Python parser, several times slower than libyaml's
(``CSafeLoader``) for the same result (``docs/design.md``). Both loaders build the same
objects and raise ``yaml.YAMLError`` subclasses for bad input.
Output keeps PyYAML's pure-Python dumpers: rendered text (and the install digests taken of it)
stays byte for byte what it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader, or PyYAML's own where libyaml is missing."""


def load(text: str | bytes) -> Any:
    """``yaml.safe_load(text)``, faster."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 (CSafeLoader or SafeLoader)


def load_all(text: str | bytes) -> Iterator[Any]:
    """``yaml.safe_load_all(text)``, faster."""
    return yaml.load_all(text, Loader=SafeLoader)
