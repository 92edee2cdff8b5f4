"""Where twostage keeps what it caches (exported models, cached embeddings, eval's collections): one function, imported
by the runtime's modules without importing each other."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$TWOSTAGE_CACHE_DIR``, else ``~/.cache/twostage``: where exported models, cached embeddings and eval's
    collections live (read at call time, so tests can point it elsewhere)."""
    return Path(os.environ.get("TWOSTAGE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "twostage"))
