"""Where meshflow caches what it downloads or builds (istioctl, the sandbox's Kubernetes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MESHFLOW_CACHE``, default ``~/.cache/meshflow`` (outside any repository)."""
    return Path(os.environ.get("MESHFLOW_CACHE", Path.home() / ".cache" / "meshflow"))
