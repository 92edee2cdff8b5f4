"""First stage of twostage: bi-encoder with embedding cache, dense and BM25 retrieval, RRF fusion.

Importing is cheap: names load on first use, and torch/sentence-transformers and bm25s only when a BiEncoder or
BM25Retriever is built.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BiEncoder": ".biencoder",
    "EncodeResult": ".biencoder",
    "BM25Retriever": ".bm25",
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
