"""A collection's vectors: its vector index (``vector_index``) over the embeddings its document store holds. It
searches (a small filtered set exactly, from the stored embeddings), catches up with the store by content, and is
rebuilt, upgraded or compacted from the store; the collection decides when, under its lock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .document_store import DocumentStore
from .errors import CollectionError
from .protocols import VectorIndexLike
from .vector_index import resolve_factory, vector_index_class

#: ``commit`` compacts an HNSW index when more than this share of its vectors are tombstones
COMPACT_ABOVE = 0.2
#: a metadata filter matching at most this many documents is scored exactly from the stored embeddings
EXACT_FILTER_MAX = 4096


class VectorStore:
    """The vector index of one collection and the document store whose embeddings it indexes."""

    def __init__(self, index: VectorIndexLike, documents: DocumentStore, *, kind: str, dimension: int):
        self.index = index
        self.documents = documents
        self.kind = kind  #: the implementation (``vector_index.VECTOR_INDEXES``), as the manifest names it
        self.dimension = dimension

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc_id, score)`` per query vector, best first (``by_score``); ``filter`` keeps documents whose
        metadata matches, and a set of at most ``EXACT_FILTER_MAX`` is scored exactly."""
        store = self.documents
        if filter:
            allowed = store.filter_ids(filter)
            if len(allowed) == 0:
                return [[] for _ in queries]
            if len(allowed) <= EXACT_FILTER_MAX:
                hits = _exact_search(queries, store.embeddings(allowed.tolist()), allowed, k)
            else:
                hits = self.index.search_lists(
                    queries, k, allowed_ids=allowed, exact=store.embeddings, ef_search=ef_search, nprobe=nprobe
                )
        else:
            hits = self.index.search_lists(queries, k, exact=store.embeddings, ef_search=ef_search, nprobe=nprobe)
        return named(store, hits)

    def catch_up(self) -> bool:
        """Bring the index in step with the store by content: remove vectors whose document is gone, add those of
        documents it lacks (internal ids are never reused, so equal ids mean equal vectors). True if it changed."""
        stored, live = self.documents.internal_ids(), self.index.ids()
        if len(stored) == len(live) and np.array_equal(stored, live):
            return False
        gone = np.setdiff1d(live, stored, assume_unique=True)
        new = np.setdiff1d(stored, live, assume_unique=True)
        if len(gone):
            self.index.remove(gone)
        for start in range(0, len(new), 10_000):
            part = new[start : start + 10_000]
            self.index.add(part, self.documents.embeddings(part.tolist()))
        return True

    def rebuild(self, factory: str, index_type: str, where: object) -> None:
        """A new index of ``factory`` built from every stored embedding (``where`` names the collection in errors)."""
        try:
            index = vector_index_class(self.kind).create(self.dimension, factory)
        except ValueError as err:
            raise CollectionError(f"{where}: {err}") from None
        index.index_type = index_type
        if self.index is not None:  # None: opening a collection whose index file is missing or stale
            # the old index goes before the new one fills, so that an 'auto' upgrade (flat to HNSW at 100,000
            # passages) never holds both; should the build fail, its empty copy catches up from the store
            self.index = self.index.empty_copy()
        try:
            index.rebuild(self.documents.iter_embeddings())
        except BaseException:
            if self.index is not None:
                self.catch_up()
            raise
        self.index = index

    def factory_for(self, index_type: str, size: int) -> str:
        """The FAISS factory string ``index_type`` means for ``size`` documents (CollectionError if it names none)."""
        try:
            return vector_index_class(self.kind).create(self.dimension, index_type, size).factory
        except ValueError as err:
            raise CollectionError(str(err)) from None

    def upgrade_due(self, index_type: str, size: int) -> str | None:
        """For ``index_type="auto"``: the bigger index type ``size`` documents have grown into (flat -> HNSW -> IVF-PQ),
        if any."""
        if index_type.strip().lower() != "auto":
            return None
        wanted = resolve_factory(self.dimension, "auto", size)
        return wanted if _auto_rank(wanted) > _auto_rank(self.index.factory) else None

    def compact_if_due(self) -> None:
        """Compact an index whose tombstones passed ``COMPACT_ABOVE`` of its vectors."""
        if self.index.tombstone_ratio > COMPACT_ABOVE:
            self.index.compact(self.documents.iter_embeddings())

    def stats(self) -> dict[str, Any]:
        return {
            "factory": self.index.factory,
            "trained": self.index.is_trained,
            "vector_count": len(self.index),
            "tombstones": self.index.tombstone_count,
            "tombstone_ratio": round(self.index.tombstone_ratio, 4),
        }


def named(store: DocumentStore, hits: list[list[tuple[int, float]]]) -> list[list[tuple[str, float]]]:
    """Internal-id hits as ``(doc_id, score)`` best first; ids the store no longer holds are dropped."""
    names = store.doc_ids(sorted({i for row in hits for i, _ in row}))
    return [by_score([(names[i], score) for i, score in row if i in names]) for row in hits]


def by_score(hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """``(doc_id, score)`` pairs best first, equal scores in doc id order: one deterministic order, which a sharded
    collection's merge (``indexes.sharded``) reproduces exactly."""
    return sorted(hits, key=lambda hit: (-hit[1], hit[0]))


def _auto_rank(factory: str) -> int:
    return 2 if factory.startswith("IVF") else 1 if factory.startswith("HNSW") else 0


def _exact_search(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Brute-force inner product over a small filtered set: exact where a graph or IVF search could miss."""
    scores = queries @ vectors.T
    k = min(k, len(ids))
    out = []
    for row in scores:
        top = np.argsort(-row, kind="stable")[:k]
        out.append([(int(ids[j]), float(row[j])) for j in top])
    return out
