"""The first-stage vector index: a FAISS index with inner-product metric and external int64 ids.

Index types that need training (IVF*, PQ, ...) keep their first vectors in an exact flat buffer, searched exactly,
until enough have arrived to train on (``min_train``); then the buffer is trained on and moved into the real index.
HNSW cannot remove vectors, so removals there become tombstones that every search excludes through an
``IDSelectorNot(IDSelectorBatch)``; :meth:`VectorIndex.compact` rebuilds without them.
Indexes that keep compressed codes (PQ, SQ) rank approximately; given the exact vectors (the collection's SQLite copy),
a search fetches ``REFINE_FACTOR`` times k and re-scores those exactly, as FAISS's ``IndexRefine`` does from RAM.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np

from .atomic import atomic_write_json, atomic_write_with
from .errors import CollectionError
from .faiss_factory import (
    HNSW_EF_SEARCH,
    faiss_reason,
    innermost,
    new_buffer,
    new_faiss_index,
    resolve_factory,
)

FORMAT_VERSION = 1
#: compressed-code indexes fetch this many times k for exact re-scoring (PQ64 on 384-d: recall@10 0.71 -> 0.99)
REFINE_FACTOR = 4

#: a batch of vectors with their ids, as ``DocumentStore.iter_embeddings`` yields them
Batch = tuple[np.ndarray, np.ndarray]
#: ids -> their exact float32 vectors in that order, as ``DocumentStore.embeddings`` returns them
ExactVectors = Callable[[np.ndarray], np.ndarray]


class VectorIndex:
    """FAISS inner-product index over float32 vectors keyed by int64 ids. Build with :meth:`create` or :meth:`load`."""

    def __init__(self, dimension: int, index_type: str, factory: str, main: faiss.Index, buffer: faiss.Index | None):
        self.dimension = dimension
        self.index_type = index_type  #: what the caller asked for (e.g. ``auto``)
        self.factory = factory  #: the resolved FAISS factory string (e.g. ``HNSW32``)
        self.generation: int | None = None  #: opaque tag stored by :meth:`save` (the collection's SQLite generation)
        self._main = main
        self._buffer = buffer  # exact flat buffer while ``_main`` is untrained, else None
        self._tombstones: set[int] = set()
        self._tombstone_selector: tuple[faiss.IDSelector, faiss.IDSelector] | None = None
        inner = innermost(main)
        self._is_hnsw = isinstance(inner, faiss.IndexHNSW)
        self._ivf = faiss.try_extract_index_ivf(main)
        self.nlist = int(self._ivf.nlist) if self._ivf is not None else 0
        #: vectors needed before the first training: FAISS's 39 points per centroid, at least 256 for PQ codebooks
        self.min_train = max(39 * self.nlist, 256)
        self._train_at = self.min_train
        # HNSW-like graphs cannot remove; others can, and a failing remove_ids switches this on too.
        self.uses_tombstones = self._is_hnsw or isinstance(inner, (faiss.IndexNSG, faiss.IndexNNDescent))
        self._selectors_supported = True
        self.ef_search = HNSW_EF_SEARCH
        self.nprobe = min(self.nlist, max(16, self.nlist // 64)) if self.nlist else 0
        self._apply_search_settings()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, dimension: int, index_type: str = "auto", expected_size: int | None = None) -> VectorIndex:
        """An empty index; ``index_type`` is auto/flat/hnsw/ivfpq or any FAISS factory string (metric is always IP)."""
        if dimension < 1:
            raise ValueError(f"dimension must be positive (got {dimension})")
        factory = resolve_factory(dimension, index_type, expected_size)
        main = new_faiss_index(dimension, factory)
        buffer = None if main.is_trained else new_buffer(dimension)
        return cls(dimension, index_type, factory, main, buffer)

    def empty_copy(self) -> VectorIndex:
        """A new, empty index of the same type, factory and search settings."""
        fresh = VectorIndex.create(self.dimension, self.factory)
        fresh.index_type = self.index_type
        fresh.ef_search, fresh.nprobe = self.ef_search, self.nprobe
        fresh._apply_search_settings()
        return fresh

    def _apply_search_settings(self) -> None:
        if self._is_hnsw:
            innermost(self._main).hnsw.efSearch = int(self.ef_search)
        if self._ivf is not None:
            self._ivf.nprobe = int(self.nprobe)

    # ------------------------------------------------------------------ size
    def __len__(self) -> int:
        """Live vectors (tombstoned ones not counted)."""
        return self._stored() - len(self._tombstones)

    def _stored(self) -> int:
        return int(self._main.ntotal) + (int(self._buffer.ntotal) if self._buffer is not None else 0)

    @property
    def is_trained(self) -> bool:
        """False while vectors still sit in the exact buffer waiting for enough training data."""
        return self._buffer is None

    @property
    def is_lossy(self) -> bool:
        """True when the trained index ranks by compressed codes (PQ, SQ, ...) rather than the vectors themselves."""
        inner = innermost(self._main)
        if isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        if isinstance(inner, faiss.IndexIVF):
            return not isinstance(inner, faiss.IndexIVFFlat)
        return not isinstance(inner, faiss.IndexFlat)

    @property
    def tombstone_count(self) -> int:
        return len(self._tombstones)

    @property
    def tombstone_ratio(self) -> float:
        """Share of stored vectors that are tombstoned; :meth:`compact` when this grows."""
        stored = self._stored()
        return len(self._tombstones) / stored if stored else 0.0

    # ------------------------------------------------------------------ writes
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under ``ids`` (unique, ≥ 0, never used before in this index, including removed ones)."""
        ids = _as_ids(ids)
        vectors = self._as_vectors(vectors)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if not len(ids):
            return
        if (ids < 0).any():
            raise ValueError("ids must be non-negative (-1 marks 'no result' in FAISS)")
        if self._tombstones and np.isin(ids, self._tombstone_array()).any():
            raise ValueError("an id that was removed cannot be added again before compact(); use a fresh id")
        if self._buffer is None:
            self._main.add_with_ids(vectors, ids)
            return
        self._buffer.add_with_ids(vectors, ids)
        if self._buffer.ntotal >= self._train_at:
            self._train_from_buffer()

    def _train_from_buffer(self) -> None:
        """Train the real index on everything in the buffer, move the buffer's vectors into it, drop the buffer."""
        ids, vectors = _buffer_contents(self._buffer)
        self._main.train(vectors)
        self._main.add_with_ids(vectors, ids)
        self._buffer = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id (unknown ids are ignored); returns how many were live and are now gone."""
        ids = np.unique(_as_ids(ids))
        if not len(ids):
            return 0
        if self._buffer is not None:
            return int(self._buffer.remove_ids(ids))
        if not self.uses_tombstones:
            try:
                return int(self._main.remove_ids(ids))
            except RuntimeError:  # "remove_ids not implemented for this type of index"
                self.uses_tombstones = True
        present = ids[np.isin(ids, self._stored_ids())]
        new = [int(i) for i in present if int(i) not in self._tombstones]
        self._tombstones.update(new)
        self._tombstone_selector = None
        return len(new)

    def _stored_ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._main.id_map) if hasattr(self._main, "id_map") else _ivf_ids(self._ivf)

    def ids(self) -> np.ndarray:
        """The live ids, sorted: what a collection compares with its document store to detect a mismatch by content."""
        stored = faiss.vector_to_array(self._buffer.id_map) if self._buffer is not None else self._stored_ids()
        stored = np.unique(np.asarray(stored, dtype=np.int64))
        return np.setdiff1d(stored, self._tombstone_array(), assume_unique=True) if self._tombstones else stored

    def _tombstone_array(self) -> np.ndarray:
        return np.fromiter(self._tombstones, dtype=np.int64, count=len(self._tombstones))

    def rebuild(self, vectors_by_id: Iterable[Batch], *, retrain: bool = False) -> None:
        """Replace the contents with ``(ids, vectors)`` batches (e.g. the document store's); tombstones are dropped.

        Types that need training train on up to ``max(min_train, min(256 * nlist, 500k))`` vectors; with
        ``retrain=True`` they train even below ``min_train`` when FAISS can (at least nlist and 256 vectors).
        """
        fresh = self.empty_copy()
        fresh._train_at = max(fresh.min_train, min(256 * fresh.nlist, 500_000))
        tombstones = self._tombstone_array() if self._tombstones else None
        for ids, vectors in vectors_by_id:
            ids = _as_ids(ids)
            if tombstones is not None:
                keep = ~np.isin(ids, tombstones)
                ids, vectors = ids[keep], np.asarray(vectors)[keep]
            fresh.add(ids, vectors)
        if fresh._buffer is not None:
            hard_minimum = max(fresh.nlist, 256)  # k-means needs at least as many points as centroids
            if fresh._buffer.ntotal >= fresh.min_train or (retrain and fresh._buffer.ntotal >= hard_minimum):
                fresh._train_from_buffer()
            elif retrain:
                raise ValueError(
                    f"{fresh._buffer.ntotal} vectors are too few to train {self.factory!r} (need {hard_minimum})"
                )
        fresh._train_at = fresh.min_train
        self._replace_with(fresh)

    def compact(self, vectors_by_id: Iterable[Batch]) -> None:
        """Rebuild without tombstones from the live ``(ids, vectors)`` batches (HNSW cannot remove in place)."""
        self.rebuild(vectors_by_id)

    def retrain(self, vectors_by_id: Iterable[Batch]) -> None:
        """Rebuild and (re)train from all ``(ids, vectors)`` batches, e.g. once an IVF index has grown."""
        self.rebuild(vectors_by_id, retrain=True)

    def _replace_with(self, other: VectorIndex) -> None:
        """Take over ``other``'s state in place, so holders of this object see the rebuilt index."""
        generation = self.generation
        self.__dict__.update(other.__dict__)
        self.generation = generation

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None = None,
        exact: ExactVectors | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``(scores, ids)`` of shape (n, k'), k' = min(k, live vectors); -1 / -inf pad.

        With ``exact`` (ids -> stored float vectors), a lossy index fetches ``REFINE_FACTOR * k`` candidates and
        returns the best ``k`` of them by their exact scores. ``ef_search`` (HNSW) and ``nprobe`` (IVF) override the
        index's own settings for this search: more is slower and finds more of the true neighbours."""
        queries = self._as_vectors(queries)
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        for name, value in (("ef_search", ef_search), ("nprobe", nprobe)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer (got {value!r})")
        effort = (int(ef_search or self.ef_search), min(int(nprobe or self.nprobe), self.nlist))
        allowed = None
        if allowed_ids is not None:
            allowed = np.unique(_as_ids(allowed_ids))
            if self._tombstones:
                allowed = np.setdiff1d(allowed, self._tombstone_array(), assume_unique=True)
        k = min(k, len(self) if allowed is None else len(allowed))
        n = len(queries)
        if k == 0 or n == 0:
            return np.full((n, max(k, 0)), -np.inf, dtype=np.float32), np.full((n, max(k, 0)), -1, dtype=np.int64)
        refine = exact is not None and self.is_trained and self.is_lossy
        fetch = min(k * REFINE_FACTOR, len(self) if allowed is None else len(allowed)) if refine else k
        scores, ids = self._search_target(queries, fetch, allowed, effort)
        if refine:
            scores, ids = _rescore(queries, ids, k, exact)  # type: ignore[arg-type]
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids

    def search_lists(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None = None,
        exact: ExactVectors | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[tuple[int, float]]]:
        """:meth:`search` as one ``[(id, score), ...]`` list per query, padding stripped."""
        scores, ids = self.search(queries, k, allowed_ids, exact, ef_search=ef_search, nprobe=nprobe)
        return [
            [(int(i), float(s)) for i, s in zip(id_row, score_row) if i >= 0] for id_row, score_row in zip(ids, scores)
        ]

    def _search_target(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, effort: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        target = self._buffer if self._buffer is not None else self._main
        selector = None  # held in this frame (and the cache) so it outlives the search call
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
        elif self._tombstones:
            if self._tombstone_selector is None:
                batch = faiss.IDSelectorBatch(self._tombstone_array())
                self._tombstone_selector = (batch, faiss.IDSelectorNot(batch))
            selector = self._tombstone_selector[1]
        if selector is not None and self._selectors_supported:
            try:
                return target.search(queries, k, params=self._params(target, k, selector, effort))
            except RuntimeError:  # this index type has no selector support: filter afterwards instead
                self._selectors_supported = False
        if selector is None:
            return target.search(queries, k, params=self._params(target, k, None, effort))
        return self._post_filtered_search(target, queries, k, allowed, effort)

    def _params(
        self, target: faiss.Index, k: int, selector: faiss.IDSelector | None, effort: tuple[int, int]
    ) -> faiss.SearchParameters | None:
        """Search parameters carrying the selector and ``effort`` = (efSearch, nprobe), which params would reset."""
        ef_search, nprobe = effort
        if target is self._main and self._is_hnsw:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(ef_search, k))
        if target is self._main and self._ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _post_filtered_search(
        self, target: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray | None, effort: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Oversample without a selector and drop excluded ids, widening until every row has k or all were searched."""
        stored = int(target.ntotal)
        fetch = min(stored, k + len(self._tombstones) if allowed is None else 2 * k)
        while True:
            scores, ids = target.search(queries, fetch, params=self._params(target, fetch, None, effort))
            if allowed is None:
                ok = (ids >= 0) & ~np.isin(ids, self._tombstone_array())
            else:
                ok = (ids >= 0) & np.isin(ids, allowed)
            if fetch >= stored or (ok.sum(axis=1) >= k).all():
                break
            fetch = min(stored, fetch * 4)
        out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(ids), k), -1, dtype=np.int64)
        for row in range(len(ids)):
            picked = np.flatnonzero(ok[row])[:k]
            out_scores[row, : len(picked)] = scores[row, picked]
            out_ids[row, : len(picked)] = ids[row, picked]
        return out_scores, out_ids

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def sidecar_path(path: str | Path) -> Path:
        """Where :meth:`save` keeps the settings and tombstones that FAISS's own file cannot hold."""
        path = Path(path)
        return path.with_name(path.name + ".json")

    def save(self, path: str | Path, *, generation: int | None = None) -> None:
        """Write the FAISS file, then its JSON sidecar, each atomically; ``generation`` is stored as a tag."""
        path = Path(path)
        stored = self._buffer if self._buffer is not None else self._main
        atomic_write_with(path, lambda tmp: faiss.write_index(stored, str(tmp)))
        if generation is not None:
            self.generation = generation
        atomic_write_json(
            self.sidecar_path(path),
            {
                "format_version": FORMAT_VERSION,
                "dimension": self.dimension,
                "index_type": self.index_type,
                "factory": self.factory,
                "trained": self._buffer is None,
                "ntotal": int(stored.ntotal),
                "uses_tombstones": self.uses_tombstones,
                "tombstones": sorted(self._tombstones),
                "ef_search": self.ef_search,
                "nprobe": self.nprobe,
                "generation": self.generation,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        """Read an index written by :meth:`save`; a missing, unreadable or mismatched pair raises CollectionError."""
        path = Path(path)
        sidecar = cls.sidecar_path(path)
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            dimension, factory = int(meta["dimension"]), str(meta["factory"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CollectionError(f"{sidecar}: cannot read vector index settings ({err})") from None
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise CollectionError(f"{sidecar}: written by a newer version (format {meta['format_version']})")
        try:
            stored = faiss.read_index(str(path))
        except RuntimeError as err:
            raise CollectionError(f"{path}: cannot read FAISS index ({faiss_reason(err)})") from None
        if stored.ntotal != meta.get("ntotal") or stored.d != dimension:
            raise CollectionError(f"{path}: does not match {sidecar.name} (interrupted save?)")
        if meta.get("trained", True):
            main, buffer = stored, None
        else:
            main, buffer = new_faiss_index(dimension, factory), stored
        index = cls(dimension, str(meta.get("index_type", factory)), factory, main, buffer)
        index.uses_tombstones = bool(meta.get("uses_tombstones", index.uses_tombstones))
        index._tombstones = {int(i) for i in meta.get("tombstones", [])}
        index.ef_search = int(meta.get("ef_search", index.ef_search))
        index.nprobe = int(meta.get("nprobe", index.nprobe))
        index.generation = meta.get("generation")
        index._apply_search_settings()
        return index

    # ------------------------------------------------------------------ helpers
    def _as_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.dimension}), got {vectors.shape}")
        return np.ascontiguousarray(vectors)

    def __repr__(self) -> str:
        return f"VectorIndex({self.factory!r}, dimension={self.dimension}, size={len(self)}, tombstones={len(self._tombstones)})"


def _rescore(queries: np.ndarray, ids: np.ndarray, k: int, exact: ExactVectors) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each row's candidate ``ids`` by exact inner product with the vectors ``exact`` returns."""
    unique = np.unique(ids[ids >= 0])
    vectors = exact(unique) if len(unique) else np.empty((0, queries.shape[1]), dtype=np.float32)
    scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    for row, (query, row_ids) in enumerate(zip(queries, ids)):
        valid = row_ids >= 0
        scores[row, valid] = vectors[np.searchsorted(unique, row_ids[valid])] @ query
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _as_ids(ids: np.ndarray | Iterable[int]) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(list(ids) if isinstance(ids, Iterator) else ids, dtype=np.int64).reshape(-1))


def _buffer_contents(buffer: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    ids = faiss.vector_to_array(buffer.id_map).astype(np.int64)
    flat = faiss.downcast_index(buffer.index)
    vectors = flat.reconstruct_n(0, flat.ntotal) if flat.ntotal else np.empty((0, flat.d), dtype=np.float32)
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def _ivf_ids(ivf: faiss.IndexIVF | None) -> np.ndarray:
    """Every id stored in an IVF index's inverted lists."""
    if ivf is None:
        return np.empty(0, dtype=np.int64)
    invlists = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(list_no), invlists.list_size(list_no)).copy()
        for list_no in range(ivf.nlist)
        if invlists.list_size(list_no)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


#: vector index implementations by the name a collection's manifest records (``vector_index``); FAISS is the one
#: shipped. Another implementation (see ``indexes.protocols.VectorIndexLike``) registers here under its own name.
VECTOR_INDEXES: dict[str, type[VectorIndex]] = {"faiss": VectorIndex}


def vector_index_class(name: str) -> type[VectorIndex]:
    """The implementation a manifest names; an unknown name is a CollectionError listing the known ones."""
    try:
        return VECTOR_INDEXES[name]
    except KeyError:
        raise CollectionError(
            f"unknown vector index {name!r} (this version has {', '.join(sorted(VECTOR_INDEXES))})"
        ) from None
