"""Dense first stage: encode queries with a BiEncoder, search any vector collection, and time both steps."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from twostage.retriever.biencoder import BiEncoder

Hits = list[list[tuple[str, float]]]


class VectorCollection(Protocol):
    """What DenseRetriever needs from a collection (``indexes.collection.Collection`` provides it)."""

    def search(self, query_vectors: np.ndarray, k: int, filter: Any = None) -> Hits: ...


@dataclass
class DenseHits:
    """Per-query (doc_id, score) lists, best first, plus seconds spent encoding queries and searching."""

    hits: Hits
    encode_s: float
    search_s: float


class DenseRetriever:
    """Query encoder + vector collection; scores are whatever the collection returns (inner product for FAISS IP)."""

    def __init__(self, encoder: BiEncoder, collection: VectorCollection):
        self.encoder = encoder
        self.collection = collection

    def search(self, queries: Sequence[str], k: int, filter: Any = None) -> Hits:
        """Top-``k`` (doc_id, score) per query, best first; ``filter`` is passed through to the collection untouched."""
        return self.timed_search(queries, k, filter=filter).hits

    def timed_search(self, queries: Sequence[str], k: int, filter: Any = None) -> DenseHits:
        """Same as ``search``, also reporting seconds spent encoding the queries and searching the collection."""
        start = time.perf_counter()
        vectors = self.encoder.encode_queries(queries)
        encoded = time.perf_counter()
        hits = self.collection.search(vectors, k, filter=filter) if len(vectors) else []
        return DenseHits(hits=hits, encode_s=encoded - start, search_s=time.perf_counter() - encoded)
