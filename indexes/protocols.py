"""What the engine needs from a collection and what a collection needs from its vector index, as small protocols:
so a sharded collection can stand in for one directory, and another vector index for FAISS."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .documents import Document, Passage


@runtime_checkable
class ManifestLike(Protocol):
    """The manifest fields the engine reads: which model made the vectors, and how (``extra["backend"]``)."""

    model_name: str
    model_fingerprint: str
    dimension: int
    extra: dict[str, Any]


@runtime_checkable
class TokenVectors(Protocol):
    """Stored passage token vectors by doc id (MaxSim reads them instead of encoding passages)."""

    def get(self, doc_id: str) -> np.ndarray | None: ...

    def get_many(self, doc_ids: Sequence[str]) -> list[np.ndarray | None]: ...


@runtime_checkable
class CollectionLike(Protocol):
    """Search, get, token vectors and writes: what ``Engine`` uses of ``indexes.collection.Collection`` (one
    directory) and ``indexes.sharded.ShardedCollection`` (many)."""

    # read-only in the protocol (so a collection's own Manifest or TokenStore type fits)
    @property
    def path(self) -> Path: ...

    @property
    def manifest(self) -> ManifestLike: ...

    @property
    def token_store(self) -> TokenVectors | None: ...

    @property
    def token_df(self) -> Any:
        """Token document frequencies for IDF weighting (``indexes.token_df``), or None."""

    def __len__(self) -> int: ...

    def search(
        self,
        query_vectors: np.ndarray,
        k: int,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc_id, score)`` per query vector, best first."""

    def lexical_search(
        self, queries: Sequence[str], k: int, filter: Mapping[str, Any] | None = None
    ) -> list[list[tuple[str, float]]]:
        """BM25 top-``k`` ``(doc_id, score)`` per query text, best first (``indexes.lexical``)."""

    def get(self, doc_ids: Sequence[str]) -> list[Document | None]:
        """Documents in the order asked; None for an id not in the collection."""

    def embeddings_of(self, doc_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of these documents, in order."""

    def iter_documents(self) -> Iterator[Document]:
        """Every document."""

    def iter_passages(self) -> Iterator[Document]:
        """Every stored passage (key, text, the context encoded before it as title)."""

    def passages(self, keys: Sequence[str]) -> Mapping[str, Any]:
        """Stored passages by key (``indexes.passage_store.StoredPassage``)."""

    def passage_count(self) -> int:
        """Passages: what the first stage searches (one per document written before passages existed)."""

    def upsert(
        self,
        docs: Sequence[Document],
        embeddings: np.ndarray,
        tokens: Sequence[np.ndarray] | None = None,
        terms: Sequence[np.ndarray] | None = None,
        splits: Sequence[Sequence[Passage]] | None = None,
    ) -> Any:
        """Store documents with their (passages') vectors (and token vectors); an existing id is replaced."""

    def delete(self, doc_ids: Sequence[str]) -> Any:
        """Remove documents; the result says which were deleted and which were missing."""

    def commit(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


#: (internal ids, float32 vectors) batches, as a collection streams its stored embeddings into an index
Batch = tuple[np.ndarray, np.ndarray]


@runtime_checkable
class VectorIndexLike(Protocol):
    """An approximate nearest-neighbour index over internal int64 ids: what ``Collection`` keeps in step with SQLite.
    The implementation is named in the manifest (``vector_index``) and looked up in ``indexes.vector_index``."""

    dimension: int
    factory: str
    index_type: str
    generation: int | None

    def __len__(self) -> int: ...

    @property
    def is_trained(self) -> bool: ...

    @property
    def tombstone_count(self) -> int: ...

    @property
    def tombstone_ratio(self) -> float: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def ids(self) -> np.ndarray: ...

    def empty_copy(self) -> VectorIndexLike:
        """A new, empty index of the same type, factory and search settings."""

    def rebuild(self, vectors_by_id: Iterable[Batch], *, retrain: bool = False) -> None: ...

    def compact(self, vectors_by_id: Iterable[Batch]) -> None: ...

    def search_lists(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None = None,
        exact: Any = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` ``(internal id, score)`` per query; ``allowed_ids`` restricts, ``exact`` re-scores lossy codes."""

    def save(self, path: str | Path, *, generation: int | None = None) -> None: ...
