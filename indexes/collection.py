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
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json, is_temp_file, read_json
from .document_store import DocumentStore, UpsertResult, open_store, storage_errors
from .documents import Document
from .errors import CollectionError, StorageError
from .lexical import LexicalIndex
from .lock import DEFAULT_WAIT, LOCK_FILE, ReadOnlyCollection, WriterLock
from .protocols import VectorIndexLike
from .token_df import TokenDF
from .token_pooling import check_factor
from .token_store import DEFAULT_ENCODING as DEFAULT_TOKEN_ENCODING
from .token_store import ENCODINGS as TOKEN_ENCODINGS
from .token_store import TRAIN_AT, TokenStore, default_pool
from .vector_index import resolve_factory, vector_index_class

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.faiss"
DOCUMENTS = "documents.sqlite"
#: every file a collection directory may hold; ``create`` only ever deletes these
OWN_FILES = {
    MANIFEST,
    VECTORS,
    VECTORS + ".json",
    DOCUMENTS,
    DOCUMENTS + "-wal",
    DOCUMENTS + "-shm",
    DOCUMENTS + "-journal",
    LOCK_FILE,
}
#: ``commit`` compacts an HNSW index when more than this share of its vectors are tombstones
COMPACT_ABOVE = 0.2
#: a metadata filter matching at most this many documents is scored exactly from the stored embeddings
EXACT_FILTER_MAX = 4096


@dataclass
class Manifest:
    """What the collection is: the model that made its vectors and how they are indexed."""

    format_version: int
    model_name: str
    model_fingerprint: str
    dimension: int
    metric: str = "inner_product"
    normalized: bool = True
    index_type: str = "auto"
    factory: str = "Flat"
    vector_index: str = "faiss"  # the implementation (indexes.vector_index.VECTOR_INDEXES); absent in old manifests
    document_count: int = 0
    vector_count: int = 0
    generation: int = 0
    created_at: str = ""
    updated_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, source: Path) -> Manifest:
        """Validate a parsed ``manifest.json``; anything missing or mistyped is a CollectionError naming the field."""
        if not isinstance(data, dict):
            raise CollectionError(f"{source}: expected a JSON object")
        kinds = {"format_version": int, "model_name": str, "model_fingerprint": str, "dimension": int}
        for name, kind in kinds.items():
            if name not in data:
                raise CollectionError(f"{source}: field {name!r} is missing")
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise CollectionError(f"{source}: field {name!r} should be {kind.__name__}, got {data[name]!r}")
        optional = {
            "normalized": bool,
            "index_type": str,
            "factory": str,
            "document_count": int,
            "vector_count": int,
            "generation": int,
            "extra": dict,
        }
        for name, kind in optional.items():
            if name in data and not isinstance(data[name], kind):
                raise CollectionError(f"{source}: field {name!r} should be {kind.__name__}, got {data[name]!r}")
        token_record = data.get("extra", {}).get("token_store")
        if token_record is not None and not isinstance(token_record, dict):
            raise CollectionError(f"{source}: field 'extra.token_store' should be an object, got {token_record!r}")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise CollectionError(f"{source}: {err}") from None


@dataclass
class DeleteResult:
    deleted: list[str] = field(default_factory=list)  #: doc ids removed, in the order given
    missing: list[str] = field(default_factory=list)  #: doc ids that were not in the collection


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Collection:
    """Documents, their embeddings and a FAISS index over them, in one directory. Use :meth:`create` or :meth:`open`."""

    #: seconds a write waits for another process's write to finish (``--wait``); a class default the CLI sets
    lock_wait: float = DEFAULT_WAIT

    def __init__(self, path: Path, manifest: Manifest, store: DocumentStore, index: VectorIndexLike):
        self.path = path
        self.manifest = manifest
        self.store = store
        self.index = index
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
        self._count = store.count()  # kept in step by upsert/delete so len() needs no COUNT(*)
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

    # ------------------------------------------------------------------ construction
    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when ``path`` is a directory holding a collection manifest."""
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        model_name: str,
        model_fingerprint: str,
        dimension: int,
        normalized: bool = True,
        index_type: str = "auto",
        expected_size: int | None = None,
        extra: dict[str, Any] | None = None,
        overwrite: bool = False,
        store_tokens: bool | str = False,
        token_pool: float | None = None,
        vector_index: str = "faiss",
    ) -> Collection:
        """A new, empty collection. Refuses a directory holding other files, and an existing collection unless overwrite.
        ``token_pool`` (with ``store_tokens``) merges each passage's stored tokens ``token_pool`` to one
        (``indexes.token_pooling``); None: the encoding's default (``token_store.DEFAULT_POOL``: 2.5 for 2bit)."""
        path = Path(path)
        token_encoding = DEFAULT_TOKEN_ENCODING if store_tokens is True else str(store_tokens)
        if store_tokens and token_encoding not in TOKEN_ENCODINGS:
            raise CollectionError(
                f"token encoding must be one of {', '.join(TOKEN_ENCODINGS)} (got {token_encoding!r})"
            )
        if token_pool is not None and not store_tokens:
            raise CollectionError("a token pool factor needs stored tokens (store_tokens / --store-tokens)")
        try:
            token_pool = (
                check_factor(token_pool)
                if token_pool is not None
                else default_pool(token_encoding)
                if store_tokens
                else 1.0
            )
        except ValueError as err:
            raise CollectionError(str(err)) from None
        if path.exists() and not path.is_dir():
            raise CollectionError(f"{path} exists and is not a directory")
        if cls.exists(path) and not overwrite:
            raise CollectionError(f"{path} already holds a collection: open it, or pass overwrite=True to replace it")
        cls._check_own_files(path)
        if not overwrite:
            cls._check_no_orphan_documents(path)
        try:
            index = vector_index_class(vector_index).create(dimension, index_type, expected_size)
        except ValueError as err:
            raise CollectionError(str(err)) from None
        with storage_errors(path / DOCUMENTS):
            path.mkdir(parents=True, exist_ok=True)
            with WriterLock(path).holding(cls.lock_wait):
                return cls._create_locked(
                    path,
                    index,
                    model_name=model_name,
                    model_fingerprint=model_fingerprint,
                    dimension=dimension,
                    normalized=normalized,
                    index_type=index_type,
                    vector_index=vector_index,
                    extra=extra,
                    overwrite=overwrite,
                    store_tokens=store_tokens,
                    token_encoding=token_encoding,
                    token_pool=token_pool,
                )

    @staticmethod
    def _check_own_files(path: Path) -> None:
        """Refuse a directory holding anything but a collection's own files (or temp files of an interrupted write)."""
        if path.is_dir():
            foreign = sorted(
                p.name for p in path.iterdir() if p.name not in OWN_FILES and not is_temp_file(p, OWN_FILES)
            )
            if foreign:
                raise CollectionError(
                    f"{path} is not empty and is not a collection (it holds {', '.join(foreign[:3])}"
                    f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
                )

    @staticmethod
    def _check_no_orphan_documents(path: Path) -> None:
        """Refuse a directory whose documents.sqlite holds documents but whose manifest is gone: a damaged collection
        to check or restore, never one to create over (an interrupted create leaves no documents and passes)."""
        database = path / DOCUMENTS
        if not database.is_file() or (path / MANIFEST).is_file():
            return
        try:
            with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as con:
                tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                count = con.execute("SELECT count(*) FROM docs").fetchone()[0] if "docs" in tables else 0
        except sqlite3.Error:
            count = None
        if count != 0:
            held = f"{count} documents" if count is not None else "an unreadable database"
            raise CollectionError(
                f"{path} has no {MANIFEST} but its {DOCUMENTS} holds {held}: run 'twostage check "
                f"{path}' (or restore the manifest), or replace it with --overwrite (overwrite=True)"
            )

    @classmethod
    def _create_locked(
        cls,
        path: Path,
        index: VectorIndexLike,
        *,
        model_name: str,
        model_fingerprint: str,
        dimension: int,
        normalized: bool,
        index_type: str,
        vector_index: str,
        extra: dict[str, Any] | None,
        overwrite: bool,
        store_tokens: bool | str,
        token_encoding: str,
        token_pool: float = 1.0,
    ) -> Collection:
        """The file-writing part of :meth:`create`, under the writer lock so two creators cannot interleave."""
        if cls.exists(path) and not overwrite:
            raise CollectionError(f"{path} already holds a collection: open it, or pass overwrite=True to replace it")
        cls._check_own_files(path)
        # Our own files only: an old collection being overwritten, or one whose creation was interrupted.
        for child in path.iterdir():
            if child.name != LOCK_FILE:
                child.unlink()
        store = DocumentStore(path / DOCUMENTS)
        now = _now()
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model_name=model_name,
            model_fingerprint=model_fingerprint,
            dimension=dimension,
            normalized=normalized,
            index_type=index_type,
            factory=index.factory,
            vector_index=vector_index,
            generation=store.generation,
            created_at=now,
            updated_at=now,
            extra=dict(extra or {}),
        )
        if store_tokens:  # True (= "2bit"), or the encoding: "2bit", "pq", "1bit", "int8" or "float16"
            manifest.extra["token_store"] = {"encoding": token_encoding}
            if token_pool != 1.0:
                manifest.extra["token_store"]["pool"] = token_pool
        store.set_meta("dimension", dimension)
        store.set_meta(
            "model_fingerprint", model_fingerprint
        )  # a second record, for 'check' to compare the manifest with
        LexicalIndex(store).create()
        index.save(path / VECTORS, generation=store.generation)
        collection = cls(path, manifest, store, index)
        collection._write_manifest()  # last: a directory with a manifest is a complete collection
        return collection

    @classmethod
    def open(cls, path: str | Path) -> Collection:
        """Open an existing collection. A vector index behind SQLite (a crash) is brought up to date from the stored
        embeddings, compared by ids; documents behind the index, or a damaged SQLite file, are refused untouched."""
        path = Path(path)
        if not path.is_dir():
            raise CollectionError(
                f"collection directory {path} " + ("is a file, not a directory" if path.exists() else "does not exist")
            )
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise CollectionError(f"{path} is not a collection: {MANIFEST} is missing")
        manifest = cls._read_manifest(manifest_path)
        try:
            index_class = vector_index_class(manifest.vector_index)
        except CollectionError as err:
            raise CollectionError(f"{manifest_path}: field 'vector_index': {err}") from None
        if not (path / DOCUMENTS).is_file():
            raise CollectionError(f"{path} is damaged: {DOCUMENTS} is missing")
        with storage_errors(path / DOCUMENTS):
            store = open_store(path / DOCUMENTS)
            try:
                collection = cls._open_with(path, manifest, store, index_class)
            except BaseException:
                store.close()
                raise
        return collection

    @classmethod
    def _open_with(cls, path: Path, manifest: Manifest, store: DocumentStore, index_class: Any) -> Collection:
        """The checks and the repair of :meth:`open` once the store is open."""
        generation = store.generation
        stored_dimension = store.get_meta("dimension")
        if stored_dimension is not None and int(stored_dimension) != manifest.dimension:
            raise StorageError(
                f"{path / MANIFEST} says dimension {manifest.dimension} but {DOCUMENTS} holds {stored_dimension}-"
                f"dimensional embeddings: the manifest was edited or comes from another collection; nothing was changed"
            )
        reason = None
        try:
            index = index_class.load(path / VECTORS)
            if index.dimension != manifest.dimension:
                index, reason = (
                    None,
                    f"index dimension {index.dimension} differs from the manifest's {manifest.dimension}",
                )
        except CollectionError as err:
            index, reason = None, str(err)
        ahead = max(manifest.generation, getattr(index, "generation", None) or 0)
        if generation < ahead:
            raise StorageError(
                f"{path}: {DOCUMENTS} is at generation {generation} but the vector index was written at generation "
                f"{ahead}: the documents file was truncated, replaced or restored from an older copy. Nothing was "
                f"changed. Restore the newer {DOCUMENTS}, or run 'twostage check {path} --repair' to rebuild the index "
                f"from the {store.count()} documents it holds"
            )
        collection = cls(path, manifest, store, index)  # type: ignore[arg-type]
        if index is None:
            collection._rebuild_index(manifest.factory)
        elif not collection._catch_up():
            return collection
        log.warning(
            "%s: the vector index was behind the documents (%s); brought up to date from the stored embeddings",
            path,
            reason or "its ids differ from the stored documents'",
        )
        problems = store.check()
        if problems:
            raise StorageError(
                f"{path / DOCUMENTS} fails SQLite's quick_check ({problems[0]}); nothing was rewritten: "
                f"run 'twostage check {path}' to see what can be saved"
            )
        collection.recovered = True  # served from memory: an open never writes (a full disk, a reader's mount)
        return collection

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
        """Bring the in-memory index in step with SQLite by content: remove vectors whose document is gone, add those
        of documents it lacks (internal ids are never reused, so equal ids mean equal vectors). True if it changed."""
        with self._lock:
            generation = self.store.generation
            stored, live = self.store.internal_ids(), self.index.ids()
            self._count = len(stored)
            self._seen_generation = generation
            if len(stored) == len(live) and np.array_equal(stored, live):
                return False
            gone = np.setdiff1d(live, stored, assume_unique=True)
            new = np.setdiff1d(stored, live, assume_unique=True)
            if len(gone):
                self.index.remove(gone)
            for start in range(0, len(new), 10_000):
                part = new[start : start + 10_000]
                self.index.add(part, self.store.embeddings(part))
            return True

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

    @staticmethod
    def _read_manifest(manifest_path: Path) -> Manifest:
        data = read_json(manifest_path)
        manifest = Manifest.from_dict(data, manifest_path)
        if manifest.format_version > FORMAT_VERSION:
            raise CollectionError(
                f"{manifest_path}: collection format {manifest.format_version} is newer than this version supports "
                f"({FORMAT_VERSION}); upgrade twostage"
            )
        return manifest

    # ------------------------------------------------------------------ writes
    def upsert(
        self,
        docs: Sequence[Document],
        embeddings: np.ndarray,
        tokens: Sequence[np.ndarray] | None = None,
        terms: Sequence[np.ndarray] | None = None,
    ) -> UpsertResult:
        """Store documents and their vectors (committed to SQLite at once); an existing id is replaced.

        With a token store, ``tokens`` (one array per document) are written in the same transaction; without them the
        documents' old tokens are dropped, so MaxSim encodes them on the fly rather than reading stale ones. ``terms``
        (each document's content token ids) update the token document frequencies in that transaction too."""
        docs = list(docs)
        embeddings = self._check_vectors(embeddings, "embeddings")
        if len(embeddings) != len(docs):
            raise ValueError(f"{len(docs)} documents but {len(embeddings)} embeddings")
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings contain NaN or infinite values")
        if not docs:
            return UpsertResult()
        if tokens is not None and len(tokens) != len(docs):
            raise ValueError(f"{len(docs)} documents but {len(tokens)} token arrays")
        if terms is not None and len(terms) != len(docs):
            raise ValueError(f"{len(docs)} documents but {len(terms)} token id arrays")
        with self._lock, storage_errors(self.path / DOCUMENTS):
            self._begin_write()
            with self.store.transaction():
                self.lexical.remove([d.id for d in docs])  # the old versions' terms, while their rows still exist
                result = self.store.upsert(docs, embeddings)
                self.lexical.add(result.new_ids, [d.text_for_encoding() for d in docs])
                if self.token_store is not None and tokens is not None:
                    self.token_store.put_many([d.id for d in docs], tokens)
                elif self.token_store is not None:
                    self.token_store.delete([d.id for d in docs])
                if self.token_df is not None and terms is not None:
                    self.token_df.put_many([d.id for d in docs], terms)
                elif self.token_df is not None:  # counted again by TokenDF.rebuild when next needed
                    self.token_df.delete([d.id for d in docs])
                self._seen_generation = self.store.generation
            self._dirty = True
            self._count += len(result.added)
            try:
                if result.replaced:
                    self.index.remove(np.fromiter(result.replaced.values(), dtype=np.int64))
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
                self.lexical.remove(list(doc_ids))
                internal_ids, missing = self.store.delete(doc_ids)
                if self.token_store is not None:
                    self.token_store.delete(doc_ids)
                if self.token_df is not None:
                    self.token_df.delete(doc_ids)
                self._seen_generation = self.store.generation
            self._dirty = self._dirty or bool(internal_ids)
            self._count -= len(internal_ids)
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
        """The body of :meth:`commit`: train, upgrade or compact the index if due, then save it and the manifest."""
        if self.token_store is not None:  # the end of an add: a small residual store learns its codec here
            self.token_store.train_pending()
        generation = self.store.generation
        upgrade = self._auto_upgrade()
        if upgrade is not None:
            log.info("%s: %d documents, switching the 'auto' index to %s", self.path, self._count, upgrade)
            self._rebuild_index(upgrade)
        elif self._index_stale:
            self._rebuild_index(self.index.factory)
        elif self.index.tombstone_ratio > COMPACT_ABOVE:
            self.index.compact(self.store.iter_embeddings())
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
        self.manifest.document_count = self._count
        self.manifest.vector_count = len(self.index)
        self.manifest.updated_at = _now()
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
                self.manifest.updated_at = _now()
                self._write_manifest()
                self.store.vacuum()
            finally:
                self._writer.release()

    def rebuild_index(self, index_type: str | None = None) -> None:
        """Rebuild the vector index from the stored embeddings, optionally as another type (e.g. after growth), and commit."""
        with self._lock:
            self._begin_write()
            if index_type is not None:
                try:
                    factory = (
                        vector_index_class(self.manifest.vector_index)
                        .create(self.manifest.dimension, index_type, self.store.count())
                        .factory
                    )
                except ValueError as err:
                    raise CollectionError(str(err)) from None
                self.manifest.index_type = index_type
            else:
                factory = self.index.factory
            self._rebuild_index(factory)
            self._dirty = True
            self.commit()

    def _rebuild_index(self, factory: str) -> None:
        try:
            index = vector_index_class(self.manifest.vector_index).create(self.manifest.dimension, factory)
        except ValueError as err:
            raise CollectionError(f"{self.path}: {err}") from None
        index.index_type = self.manifest.index_type
        generation = self.store.generation
        index.rebuild(self.store.iter_embeddings())
        self.index = index
        self._index_stale = False
        self._seen_generation = generation

    def _auto_upgrade(self) -> str | None:
        """For ``index_type="auto"``: the bigger index type the collection has grown into (flat → HNSW → IVF-PQ), if any."""
        if self.manifest.index_type.strip().lower() != "auto":
            return None
        wanted = resolve_factory(self.manifest.dimension, "auto", self._count)
        return wanted if _auto_rank(wanted) > _auto_rank(self.index.factory) else None

    def _write_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, asdict(self.manifest))

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
            if filter:
                allowed = self.store.filter_ids(filter)
                if len(allowed) == 0:
                    return [[] for _ in queries]
                if len(allowed) <= EXACT_FILTER_MAX:
                    hits = _exact_search(queries, self.store.embeddings(allowed), allowed, k)
                else:
                    hits = self.index.search_lists(
                        queries, k, allowed_ids=allowed, exact=self.store.embeddings, ef_search=ef_search, nprobe=nprobe
                    )
            else:
                hits = self.index.search_lists(
                    queries, k, exact=self.store.embeddings, ef_search=ef_search, nprobe=nprobe
                )
            names = self.store.doc_ids({i for row in hits for i, _ in row})
        return [by_score([(names[i], score) for i, score in row if i in names]) for row in hits]

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
            hits = self.lexical.search(list(queries), k, filter)
            names = self.store.doc_ids({i for row in hits for i, _ in row})
        return [by_score([(names[i], score) for i, score in row if i in names]) for row in hits]

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
        """Documents in the collection (every one has exactly one live vector), as committed by any process."""
        self._follow()
        return self._count

    def stats(self) -> dict[str, Any]:
        """Counts, index and model settings and sizes on disk, for ``twostage info``."""
        with self._lock:
            self._follow()
            documents = self._count
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
                "factory": self.index.factory,
                "trained": self.index.is_trained,
                "document_count": documents,
                "vector_count": len(self.index),
                "tombstones": self.index.tombstone_count,
                "tombstone_ratio": round(self.index.tombstone_ratio, 4),
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
