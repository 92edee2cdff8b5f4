"""twostage: index a collection, search it with a bi-encoder + FAISS, rerank with a cross-encoder, measure it."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Imported on first use, so that light commands (`twostage info`, `twostage eval --run`) skip loading torch.
_EXPORTS = {
    "Engine": ".engine",
    "AddReport": ".engine",
    "DeleteReport": ".engine",
    "Hit": ".results",
    "SearchResult": ".results",
    "Timings": ".results",
    "UsageError": ".errors",
    "SearchRequest": ".search_request",
    "Ranker": ".ranking",
    "rank": ".ranking",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'twostage' has no attribute {name!r}")
