"""First stage of twostage: model resolution, bi-encoder with embedding cache, dense and BM25 retrieval, RRF fusion.

Importing is cheap: torch/sentence-transformers and bm25s load only when a BiEncoder or BM25Retriever is built.
"""
from retriever.biencoder import BiEncoder, EncodeResult
from retriever.bm25 import BM25Retriever
from retriever.cache import EmbeddingCache, default_cache_path
from retriever.dense import DenseHits, DenseRetriever
from retriever.fusion import reciprocal_rank_fusion, trec_order
from retriever.models import (
    DEFAULT_BI_ENCODER,
    ModelLoadError,
    ResolvedModel,
    hub_reachable,
    model_fingerprint,
    resolve_model,
)

__all__ = [
    "DEFAULT_BI_ENCODER",
    "BM25Retriever",
    "BiEncoder",
    "DenseHits",
    "DenseRetriever",
    "EmbeddingCache",
    "EncodeResult",
    "ModelLoadError",
    "ResolvedModel",
    "default_cache_path",
    "hub_reachable",
    "model_fingerprint",
    "reciprocal_rank_fusion",
    "resolve_model",
    "trec_order",
]
