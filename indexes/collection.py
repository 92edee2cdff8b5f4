"""A collection: one directory with ``documents.sqlite`` (source of truth), ``vectors.faiss`` (+ sidecar) and ``manifest.json``.

Crash safety: every ``upsert``/``delete`` commits to SQLite at once and bumps a generation counter there.
:meth:`Collection.commit` then writes the FAISS file and the manifest (atomically), tagged with that generation.
:meth:`Collection.open` compares the tags with SQLite's generation and, when a crash left them behind, rebuilds the
FAISS index from the embeddings SQLite holds. A ``kill -9`` at any moment therefore costs at most a rebuild.

With ``index_type="auto"`` the index follows the collection's size: ``commit`` rebuilds a flat index as HNSW once
it holds 100k documents, and HNSW as IVF-PQ at 2M (pass ``expected_size`` to ``create`` to start with the right one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import is_temp_file
from .collection_lifecycle import create_collection, open_collection_dir
from .collection_manifest import (
    DOCUMENTS,
    MANIFEST,
    OWN_FILES,
    VECTORS,
    Manifest,
    read_manifest,
    utc_now,
    write_manifest,
)
from .document_store import DocumentStore, UpsertResult, storage_errors
from .documents import Document, Passage
from .errors import CollectionError, StorageError
from .lexical import LexicalIndex
from .lock import DEFAULT_WAIT, ReadOnlyCollection, WriterLock
from .passage_store import StoredPassage
from .protocols import VectorIndexLike
from .token_df import TokenDF
from .token_store import TRAIN_AT, TokenStore
from .vector_store import VectorStore, named

log = logging.getLogger(__name__)


@dataclass
class DeleteResult:
    deleted: list[str] = field(default_factory=list)  #: doc ids removed, in the order given
    missing: list[str] = field(default_factory=list)  #: doc ids that were not in the collection


class Collection:
    """Documents, their embeddings and a FAISS index over them, in one directory. Use :meth:`create` or :meth:`open`."""

    #: seconds a write waits for another process's write to finish (``--wait``); a class default the CLI sets
    lock_wait: float = DEFAULT_WAIT

    def __init__(self, path: Path, manifest: Manifest, store: DocumentStore, index: VectorIndexLike):
        self.path = path
        self.manifest = manifest
        #: the documents, their embeddings and every per-document table (SQLite: the source of truth)
        self.store = store
        #: the vector index over the stored embeddings (``vector_store.VectorStore``)
        self.vectors = VectorStore(index, store, kind=manifest.vector_index, dimension=manifest.dimension)
        #: True when :meth:`open` found the FAISS file behind SQLite (an interrupted run) and rebuilt it
        self.recovered = False
        self._repair_saved = False  # the first write saves an index an open rebuilt in memory (``_save_repair``)
        #: True where the directory cannot be written: searches and reads work, writes raise ReadOnlyCollection
        self.read_only = store.read_only
        self._dirty = False  # this process changed the collection (or repaired its index) since the last commit
        self._seen_generation = store.generation  # the SQLite generation the in-memory index is in step with
        self._writer = WriterLock(path)  # one writing process at a time: taken by the first write, released by commit
        self._index_stale = False  # the in-memory index missed a change SQLite committed: rebuild before saving
        self._lock = threading.RLock()
        self._closed = False
        self._count = store.count()  # passages (stored rows), kept in step by upsert/delete: len() needs no COUNT(*)
        self._documents = store.document_count()
        #: per-passage token vectors for MaxSim (``create(store_tokens=True)``), kept in step by upsert/delete
        self.token_store: TokenStore | None = None
        if manifest.extra.get("token_store"):
            recorded = manifest.extra["token_store"]
            try:
                self.token_store = TokenStore(store, encoding=recorded.get("encoding"), pool=recorded.get("pool", 1.0))
            except (ValueError, TypeError) as err:
                raise CollectionError(f"{path / MANIFEST}: field 'extra.token_store': {err}") from None
            # the SQLite file's record wins: a crash may have come between a conversion and its manifest write
            manifest.extra["token_store"] = self._token_record()
        #: document frequency per token id (MaxSim's IDF query weights), kept beside the token store by upsert/delete
        self.token_df: TokenDF | None = TokenDF(store) if self.token_store is not None else None
        #: BM25 over the documents (SQLite FTS5 in the same file), kept in step by upsert/delete in their transaction
        self.lexical = LexicalIndex(store)

    @classmethod
    def create(cls, path: str | Path, **settings: Any) -> Collection:
        """A new, empty collection (``collection_lifecycle.create_collection``: its settings, its refusals)."""
        return create_collection(cls, path, **settings)

    @classmethod
    def open(cls, path: str | Path) -> Collection:
        """Open an existing collection, repaired in memory if a crash left its index behind
        (``collection_lifecycle.open_collection_dir``)."""
        return open_collection_dir(cls, path)

    _read_manifest = staticmethod(read_manifest)

    @property
    def index(self) -> VectorIndexLike:
        """The vector index itself (``self.vectors.index``)."""
        return self.vectors.index

    # ------------------------------------------------------------------ construction
    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when ``path`` is a directory holding a collection manifest."""
        return (Path(path) / MANIFEST).is_file()

    def _save_repair(self) -> None:
        """On the first write after an open that rebuilt the index in memory: have the commit write it, and remove the
        temp files an interrupted atomic write left behind (none is being written: this process holds the lock)."""
        if not self.recovered or self._repair_saved:
            return
        self._repair_saved = True
        for child in self.path.iterdir():
            if is_temp_file(child, OWN_FILES):
                child.unlink(missing_ok=True)
        self._dirty = True

    def _catch_up(self) -> bool:
        """Bring the in-memory index in step with SQLite by content (``VectorStore.catch_up``); True if it changed."""
        with self._lock:
            generation = self.store.generation
            self._count = self.store.count()
            self._documents = self.store.document_count()
            self._seen_generation = generation
            return self.vectors.catch_up()

    def _follow(self) -> None:
        """Before answering: if another process committed a change since, catch up with it (a cheap check otherwise)."""
        if self._closed:
            return
        with self._lock, storage_errors(self.path / DOCUMENTS):
            if self.store.generation != self._seen_generation:
                self._catch_up()

    def hold_writer(self) -> bool:
        """Take the writer lock now (as the first write would), for a caller that must know every part of a write can
        go ahead before any part is made (a sharded collection's); True if this call took it. :meth:`commit`, or
        :meth:`release_writer`, lets it go."""
        with self._lock:
            taken = not self._writer.held
            self._begin_write()
            return taken

    def release_writer(self) -> None:
        """Let go of the writer lock :meth:`hold_writer` took, without a commit (nothing was written)."""
        self._writer.release()

    def _begin_write(self) -> None:
        """Take the writer lock (held until :meth:`commit`) and catch up with what other writers committed before it."""
        if self.read_only:
            raise ReadOnlyCollection(f"{self.path} is read-only: it can be searched but not changed")
        if not self._writer.held:
            self._writer.acquire(self.lock_wait)
        self._follow()
        self._save_repair()

    # ------------------------------------------------------------------ writes
    def upsert(
        self,
        docs: Sequence[Document],
        embeddings: np.ndarray,
        tokens: Sequence[np.ndarray] | None = None,
        terms: Sequence[np.ndarray] | None = None,
        splits: Sequence[Sequence[Passage]] | None = None,
    ) -> UpsertResult:
        """Store documents and their vectors (committed to SQLite at once); an existing id is replaced, all of its old
        passages with it. ``splits`` gives each document's passages (``twostage.ingest.passages``); ``embeddings``,
        ``tokens`` and ``terms`` then hold one row per passage, in order. Without it each document is one passage.

        With a token store, ``tokens`` are written in the same transaction; without them the rows' old tokens are
        dropped, so MaxSim encodes them on the fly rather than reading stale ones. ``terms`` (each row's content token
        ids) update the token document frequencies in that transaction too."""
        docs = list(docs)
        embeddings = self._check_vectors(embeddings, "embeddings")
        rows = len(docs) if splits is None else sum(max(len(split), 1) for split in splits)
        if len(embeddings) != rows:
            raise ValueError(f"{rows} passages but {len(embeddings)} embeddings")
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings contain NaN or infinite values")
        if not docs:
            return UpsertResult()
        if tokens is not None and len(tokens) != rows:
            raise ValueError(f"{rows} passages but {len(tokens)} token arrays")
        if terms is not None and len(terms) != rows:
            raise ValueError(f"{rows} passages but {len(terms)} token id arrays")
        with self._lock, storage_errors(self.path / DOCUMENTS):
            self._begin_write()
            with self.store.transaction():
                old_keys = self.store.keys_of([d.id for d in docs])
                self.lexical.remove(old_keys)  # the old versions' terms, while their rows still exist
                result = self.store.upsert(docs, embeddings, splits)
                self.lexical.add(result.new_ids, result.bodies)
                if self.token_store is not None:
                    self.token_store.delete(old_keys)
                    if tokens is not None:
                        self.token_store.put_many(result.keys, tokens)
                if self.token_df is not None:  # without terms: counted again by TokenDF.rebuild when next needed
                    self.token_df.delete(old_keys)
                    if terms is not None:
                        self.token_df.put_many(result.keys, terms)
                self._seen_generation = self.store.generation
            self._dirty = True
            self._count += len(result.new_ids) - len(result.removed_ids)
            self._documents += len(result.added)
            try:
                if result.removed_ids:
                    self.index.remove(np.asarray(result.removed_ids, dtype=np.int64))
                self.index.add(result.new_ids, embeddings)
            except BaseException:
                self._index_stale = True
                raise
            if self.token_store is not None and tokens is not None:  # a residual store learns its codec once it can
                self.token_store.train_pending(minimum=TRAIN_AT)
        return result

    def delete(self, doc_ids: Sequence[str]) -> DeleteResult:
        """Delete documents by id (committed to SQLite at once); unknown ids are reported in ``missing``."""
        with self._lock, storage_errors(self.path / DOCUMENTS):
            self._begin_write()
            with self.store.transaction():
                keys = self.store.keys_of(list(doc_ids))
                self.lexical.remove(keys)
                internal_ids, missing = self.store.delete(doc_ids)
                if self.token_store is not None:
                    self.token_store.delete(keys)
                if self.token_df is not None:
                    self.token_df.delete(keys)
                self._seen_generation = self.store.generation
            self._dirty = self._dirty or bool(internal_ids)
            self._count -= len(internal_ids)
            self._documents -= len({str(d) for d in doc_ids}) - len(missing)
            try:
                self.index.remove(np.asarray(internal_ids, dtype=np.int64))
            except BaseException:
                self._index_stale = True
                raise
        gone = set(missing)
        deleted = [d for d in dict.fromkeys(str(d) for d in doc_ids) if d not in gone]
        return DeleteResult(deleted=deleted, missing=missing)

    def commit(self) -> None:
        """Write the FAISS index and the manifest to disk (atomically) if this process changed anything since the
        last commit, then release the writer lock its first write took."""
        with self._lock:
            try:
                if self._dirty or self._index_stale:
                    self._begin_write()  # held since the first write, unless a failed write let it go
                    with storage_errors(self.path / DOCUMENTS):
                        self._commit_locked()
            finally:
                self._writer.release()

    def _commit_locked(self) -> None:
        """The body of :meth:`commit`: upgrade or compact the index if due, then save it and the manifest."""
        generation = self.store.generation
        upgrade = self.vectors.upgrade_due(self.manifest.index_type, self._count)
        if upgrade is not None:
            log.info("%s: %d documents, switching the 'auto' index to %s", self.path, self._count, upgrade)
            self._rebuild_index(upgrade)
        elif self._index_stale:
            self._rebuild_index(self.index.factory)
        else:
            self.vectors.compact_if_due()
        try:
            self.index.save(self.path / VECTORS, generation=generation)
        except RuntimeError as err:  # FAISS's own write error (a full disk, a read-only place)
            raise StorageError(
                f"{self.path}: cannot write {VECTORS} ({' '.join(str(err).split())[-160:]}); the "
                f"documents are safe in {DOCUMENTS}, searches rebuild the index in memory, and the next write (or "
                f"'twostage check --repair') saves it"
            ) from None
        self.manifest.generation = generation
        self.manifest.factory = self.index.factory
        self.manifest.document_count = self._documents
        self.manifest.passage_count = self._count
        self.manifest.vector_count = len(self.index)
        self.manifest.updated_at = utc_now()
        self._write_manifest()
        self._dirty = False

    def convert_tokens(self, encoding: str, pool: float | None = None) -> None:
        """Re-encode the stored token vectors into ``encoding`` (2bit, pq, 1bit, int8, float16), pooled by ``pool`` if
        given (an unpooled store only), in one SQLite transaction, record it in the manifest (the SQLite file's own
        record wins if a crash comes between the two), and give the freed pages back to the file system (``VACUUM``)."""
        if self.token_store is None:
            raise CollectionError(f"collection {self.path} stores no token vectors (build it with --store-tokens)")
        with self._lock:
            self._begin_write()
            try:
                self.token_store.convert(encoding, pool=pool)
            except ValueError as err:
                raise CollectionError(f"{self.path}: cannot convert its tokens to {encoding}: {err}") from None
            else:
                self.manifest.extra["token_store"] = self._token_record()
                self.manifest.updated_at = utc_now()
                self._write_manifest()
                self.store.vacuum()
            finally:
                self._writer.release()

    def rebuild_index(self, index_type: str | None = None) -> None:
        """Rebuild the vector index from the stored embeddings, optionally as another type (e.g. after growth), and commit."""
        with self._lock:
            self._begin_write()
            if index_type is not None:
                factory = self.vectors.factory_for(index_type, self.store.count())
                self.manifest.index_type = index_type
            else:
                factory = self.index.factory
            self._rebuild_index(factory)
            self._dirty = True
            self.commit()

    def _rebuild_index(self, factory: str) -> None:
        generation = self.store.generation
        try:
            self.vectors.rebuild(factory, self.manifest.index_type, self.path)
        except BaseException:  # the old kind of index was caught up from SQLite, unless that failed too: check again
            self._index_stale = True
            raise
        self._index_stale = False
        self._seen_generation = generation

    def _write_manifest(self) -> None:
        write_manifest(self.path, self.manifest)

    # ------------------------------------------------------------------ reads
    def search(
        self,
        query_vectors: np.ndarray,
        k: int,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc_id, score)`` per query vector, best first; ``filter`` keeps docs whose metadata matches.
        ``ef_search`` / ``nprobe`` override an HNSW / IVF index's search effort for this call."""
        queries = self._check_vectors(query_vectors, "query vectors")
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        with self._lock:
            self._follow()
            return self.vectors.search(queries, k, filter, ef_search=ef_search, nprobe=nprobe)

    def lexical_search(
        self, queries: Sequence[str], k: int, filter: Mapping[str, Any] | None = None
    ) -> list[list[tuple[str, float]]]:
        """BM25 top-``k`` ``(doc_id, score)`` per query text, best first (``indexes.lexical``); a collection made
        before the lexical index existed is indexed from its stored texts first, in one transaction."""
        if k < 1:
            raise ValueError(f"k must be at least 1 (got {k})")
        with self._lock, storage_errors(self.path / DOCUMENTS):
            if not self.lexical.ready:
                if self.read_only:
                    raise ReadOnlyCollection(
                        f"{self.path} has no lexical (BM25) index yet and is read-only here: search it once where it "
                        f"can be written (any bm25 or hybrid search builds the index), then search it here"
                    )
                log.info("%s: building the lexical index from %d stored documents", self.path, self._count)
                held = self._writer.held
                self._begin_write()  # a write, even from a search: one writer at a time
                try:
                    self.lexical.build()
                finally:
                    if not held:
                        self._writer.release()
            return named(self.store, self.lexical.search(list(queries), k, filter))

    def get(self, doc_ids: Sequence[str]) -> list[Document | None]:
        """Documents in the order asked; None for an id not in the collection."""
        with storage_errors(self.path / DOCUMENTS):
            return self.store.get(list(doc_ids))

    def embeddings_of(self, doc_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of these documents, in order (KeyError for an id not in the collection)."""
        return self.store.embeddings_by_doc_id(list(doc_ids))

    def iter_documents(self) -> Iterator[Document]:
        """Every document, in the order they were stored."""
        return self.store.iter_documents()

    def hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc_id -> ``document_store.content_hash`` for the ids stored."""
        return self.store.hashes(list(doc_ids))

    def __len__(self) -> int:
        """Documents in the collection, as committed by any process."""
        self._follow()
        return self._documents

    def passage_count(self) -> int:
        """Passages (stored rows, each with one live vector): what the first stage searches."""
        self._follow()
        return self._count

    def passages(self, keys: Sequence[str]) -> dict[str, StoredPassage]:
        """The passages that search results name (their keys), with their documents' ids, titles and places."""
        with storage_errors(self.path / DOCUMENTS):
            return self.store.passages(list(keys))

    def iter_passages(self) -> Iterator[Document]:
        """Every passage as stored (key, text, encoded context as title), for recounting what passages hold."""
        return self.store.iter_passages()

    def stats(self) -> dict[str, Any]:
        """Counts, index and model settings and sizes on disk, for ``twostage info``."""
        with self._lock:
            self._follow()
            documents = self._documents
            files = {p.name: p.stat().st_size for p in self.path.iterdir() if p.name in OWN_FILES and p.is_file()}
            m = self.manifest
            return {
                "path": str(self.path),
                "model_name": m.model_name,
                "model_fingerprint": m.model_fingerprint,
                "dimension": m.dimension,
                "metric": m.metric,
                "normalized": m.normalized,
                "index_type": m.index_type,
                **self.vectors.stats(),
                "document_count": documents,
                "passage_count": self._count,
                "generation": self.store.generation,
                "created_at": m.created_at,
                "updated_at": m.updated_at,
                "vectors_bytes": sum(v for k, v in files.items() if k.startswith(VECTORS)),
                "documents_bytes": sum(v for k, v in files.items() if k.startswith(DOCUMENTS)),
                "disk_bytes": sum(files.values()),
                "extra": dict(m.extra),
                **self._token_stats(),
            }

    def _token_record(self) -> dict[str, Any]:
        """The manifest's ``token_store`` entry: the store's encoding, and its pool factor where it pools."""
        assert self.token_store is not None
        record: dict[str, Any] = {"encoding": self.token_store.encoding}
        if self.token_store.pool != 1.0:
            record["pool"] = self.token_store.pool
        return record

    def _token_stats(self) -> dict[str, Any]:
        """Token store size for ``stats()``: passages with tokens and mean stored bytes per passage."""
        if self.token_store is None:
            return {}
        tokens = self.token_store.stats()
        return {
            "token_encoding": self.token_store.encoding,
            "token_pool": self.token_store.pool,
            "token_passages": tokens.passages,
            "tokens_per_passage": round(tokens.tokens_per_passage, 1),
            "token_bytes_per_passage": round(tokens.bytes_per_passage, 1),
            "token_codec_bytes": tokens.codec_bytes,
        }

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Commit pending index changes and close SQLite. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                self.commit()
            finally:
                self._closed = True
                self._writer.release()
                self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.manifest.dimension:
            raise ValueError(f"{what} must have shape (n, {self.manifest.dimension}), got {np.shape(vectors)}")
        return np.ascontiguousarray(vectors)
