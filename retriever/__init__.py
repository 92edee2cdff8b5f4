"""First stage of twostage: bi-encoder with embedding cache, dense retrieval, RRF fusion (BM25 is the collection's
FTS5 index, `indexes.lexical`).

Importing is cheap: names load on first use, and torch/sentence-transformers only when a BiEncoder is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BiEncoder": ".biencoder",
    "EncodeResult": ".biencoder",
    "EmbeddingCache": ".cache",
    "default_cache_path": ".cache",
    "reciprocal_rank_fusion": ".fusion",
    "trec_order": ".fusion",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'twostage.retriever' has no attribute {name!r}")
