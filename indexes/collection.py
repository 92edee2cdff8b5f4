"""A collection: one directory with ``documents.sqlite`` (source of truth), ``vectors.faiss`` (+ sidecar) and ``manifest.json``.

Crash safety: every ``upsert``/``delete`` commits to SQLite at once and bumps a generation counter there.
:meth:`Collection.commit` then writes the FAISS file and the manifest (atomically), tagged with that generation.
:meth:`Collection.open` compares the tags with SQLite's generation and, when a crash left them behind, rebuilds the
FAISS index from the embeddings SQLite holds. A ``kill -9`` at any moment therefore costs at most a rebuild.

With ``index_type="auto"`` the index follows the collection's size: ``commit`` rebuilds a flat index as HNSW once
it holds 100k documents, and HNSW as IVF-PQ at 2M (pass ``expected_size`` to ``create`` to start with the right one).
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .atomic import atomic_write_json, is_temp_file
from .document_store import DocumentStore, UpsertResult
from .token_df import TokenDF
from .token_store import DEFAULT_ENCODING as DEFAULT_TOKEN_ENCODING
from .token_store import ENCODINGS as TOKEN_ENCODINGS
from .token_store import TRAIN_AT, TokenStore
from .documents import Document
from .errors import CollectionError
from .protocols import VectorIndexLike
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
    def from_dict(cls, data: Any, source: Path) -> "Manifest":
        """Validate a parsed ``manifest.json``; anything missing or mistyped is a CollectionError naming the field."""
        if not isinstance(data, dict):
            raise CollectionError(f"{source}: expected a JSON object")
        kinds = {"format_version": int, "model_name": str, "model_fingerprint": str, "dimension": int}
        for name, kind in kinds.items():
            if name not in data:
                raise CollectionError(f"{source}: field {name!r} is missing")
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise CollectionError(f"{source}: field {name!r} should be {kind.__name__}, got {data[name]!r}")
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

    def __init__(self, path: Path, manifest: Manifest, store: DocumentStore, index: VectorIndexLike):
        self.path = path
        self.manifest = manifest
        self.store = store
        self.index = index
        #: True when :meth:`open` found the FAISS file behind SQLite (an interrupted run) and rebuilt it
        self.recovered = False
        self._saved_generation = manifest.generation
        self._index_stale = False  # the in-memory index missed a change SQLite committed: rebuild before saving
        self._lock = threading.RLock()
        self._closed = False
        self._count = store.count()  # kept in step by upsert/delete so len() needs no COUNT(*)
        #: per-passage token vectors for MaxSim (``create(store_tokens=True)``), kept in step by upsert/delete
        self.token_store: TokenStore | None = None
        if manifest.extra.get("token_store"):
            self.token_store = TokenStore(store, encoding=manifest.extra["token_store"]["encoding"])
            # the SQLite file's record wins: a crash may have come between a conversion and its manifest write
            manifest.extra["token_store"] = {"encoding": self.token_store.encoding}
        #: document frequency per token id (MaxSim's IDF query weights), kept beside the token store by upsert/delete
        self.token_df: TokenDF | None = TokenDF(store) if self.token_store is not None else None

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
        vector_index: str = "faiss",
    ) -> "Collection":
        """A new, empty collection. Refuses a directory holding other files, and an existing collection unless overwrite."""
        path = Path(path)
        token_encoding = DEFAULT_TOKEN_ENCODING if store_tokens is True else str(store_tokens)
        if store_tokens and token_encoding not in TOKEN_ENCODINGS:
            raise CollectionError(f"token encoding must be one of {', '.join(TOKEN_ENCODINGS)} (got {token_encoding!r})")
        if path.exists() and not path.is_dir():
            raise CollectionError(f"{path} exists and is not a directory")
        if cls.exists(path) and not overwrite:
            raise CollectionError(f"{path} already holds a collection: open it, or pass overwrite=True to replace it")
        if path.is_dir():
            foreign = sorted(p.name for p in path.iterdir() if p.name not in OWN_FILES and not is_temp_file(p, OWN_FILES))
            if foreign:
                raise CollectionError(
                    f"{path} is not empty and is not a collection (it holds {', '.join(foreign[:3])}"
                    f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
                )
            # Our own files only: an old collection being overwritten, or one whose creation was interrupted.
            for child in path.iterdir():
                child.unlink()
        try:
            index = vector_index_class(vector_index).create(dimension, index_type, expected_size)
        except ValueError as err:
            raise CollectionError(str(err)) from None
        path.mkdir(parents=True, exist_ok=True)
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
        if store_tokens:  # True (= "2bit"), or the encoding: "2bit", "1bit", "int8" or "float16"
            manifest.extra["token_store"] = {"encoding": token_encoding}
        store.set_meta("dimension", dimension)
        index.save(path / VECTORS, generation=store.generation)
        collection = cls(path, manifest, store, index)
        collection._write_manifest()  # last: a directory with a manifest is a complete collection
        return collection

    @classmethod
    def open(cls, path: str | Path) -> "Collection":
        """Open an existing collection, rebuilding its FAISS index from SQLite if a crash left it out of date."""
        path = Path(path)
        if not path.is_dir():
            raise CollectionError(f"collection directory {path} does not exist")
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
        for child in path.iterdir():  # temp files an interrupted atomic write left behind
            if is_temp_file(child, OWN_FILES):
                child.unlink(missing_ok=True)
        store = DocumentStore(path / DOCUMENTS)
        generation = store.generation
        reason = None
        try:
            index = index_class.load(path / VECTORS)
            if index.dimension != manifest.dimension:
                reason = f"index dimension {index.dimension} differs from the manifest's {manifest.dimension}"
            elif index.generation != generation or manifest.generation != generation:
                reason = f"index is at generation {index.generation}, documents at {generation}"
            elif len(index) != store.count():
                reason = f"index holds {len(index)} vectors for {store.count()} documents"
        except CollectionError as err:
            index, reason = None, str(err)
        collection = cls(path, manifest, store, index)  # type: ignore[arg-type]
        if reason is not None:
            log.warning("%s: rebuilding the vector index from stored embeddings (%s)", path, reason)
            collection._rebuild_index(manifest.factory)
            collection.recovered = True
            collection._saved_generation = -1
            collection.commit()
        return collection

    @staticmethod
    def _read_manifest(manifest_path: Path) -> Manifest:
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise CollectionError(f"{manifest_path}: cannot read ({err})") from None
        except json.JSONDecodeError as err:
            raise CollectionError(f"{manifest_path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
        manifest = Manifest.from_dict(data, manifest_path)
        if manifest.format_version > FORMAT_VERSION:
            raise CollectionError(
                f"{manifest_path}: collection format {manifest.format_version} is newer than this version supports "
                f"({FORMAT_VERSION}); upgrade twostage"
            )
        return manifest

    # ------------------------------------------------------------------ writes
    def upsert(
        self, docs: Sequence[Document], embeddings: np.ndarray, tokens: Sequence[np.ndarray] | None = None,
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
        with self._lock:
            with self.store.transaction():
                result = self.store.upsert(docs, embeddings)
                if self.token_store is not None and tokens is not None:
                    self.token_store.put_many([d.id for d in docs], tokens)
                elif self.token_store is not None:
                    self.token_store.delete([d.id for d in docs])
                if self.token_df is not None and terms is not None:
                    self.token_df.put_many([d.id for d in docs], terms)
                elif self.token_df is not None:  # counted again by TokenDF.rebuild when next needed
                    self.token_df.delete([d.id for d in docs])
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
        with self._lock:
            with self.store.transaction():
                internal_ids, missing = self.store.delete(doc_ids)
                if self.token_store is not None:
                    self.token_store.delete(doc_ids)
                if self.token_df is not None:
                    self.token_df.delete(doc_ids)
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
        """Write the FAISS index and the manifest to disk (atomically) if anything changed since the last commit."""
        with self._lock:
            if self.token_store is not None:  # the end of an add: a small residual store learns its codec here
                self.token_store.train_pending()
            generation = self.store.generation
            if generation == self._saved_generation and not self._index_stale:
                return
            upgrade = self._auto_upgrade()
            if upgrade is not None:
                log.info("%s: %d documents, switching the 'auto' index to %s", self.path, self._count, upgrade)
                self._rebuild_index(upgrade)
            elif self._index_stale:
                self._rebuild_index(self.index.factory)
            elif self.index.tombstone_ratio > COMPACT_ABOVE:
                self.index.compact(self.store.iter_embeddings())
            self.index.save(self.path / VECTORS, generation=generation)
            self.manifest.generation = generation
            self.manifest.factory = self.index.factory
            self.manifest.document_count = self._count
            self.manifest.vector_count = len(self.index)
            self.manifest.updated_at = _now()
            self._write_manifest()
            self._saved_generation = generation

    def convert_tokens(self, encoding: str) -> None:
        """Re-encode the stored token vectors into ``encoding`` (2bit, 1bit, int8, float16) in one SQLite transaction,
        then record it in the manifest (the SQLite file's own record wins if a crash comes between the two)."""
        if self.token_store is None:
            raise CollectionError(f"collection {self.path} stores no token vectors (build it with --store-tokens)")
        with self._lock:
            self.token_store.convert(encoding)
            self.manifest.extra["token_store"] = {"encoding": self.token_store.encoding}
            self.manifest.updated_at = _now()
            self._write_manifest()

    def rebuild_index(self, index_type: str | None = None) -> None:
        """Rebuild the vector index from the stored embeddings, optionally as another type (e.g. after growth), and commit."""
        with self._lock:
            if index_type is not None:
                try:
                    factory = vector_index_class(self.manifest.vector_index).create(self.manifest.dimension, index_type, self.store.count()).factory
                except ValueError as err:
                    raise CollectionError(str(err)) from None
                self.manifest.index_type = index_type
            else:
                factory = self.index.factory
            self._rebuild_index(factory)
            self._saved_generation = -1
            self.commit()

    def _rebuild_index(self, factory: str) -> None:
        try:
            index = vector_index_class(self.manifest.vector_index).create(self.manifest.dimension, factory)
        except ValueError as err:
            raise CollectionError(f"{self.path}: {err}") from None
        index.index_type = self.manifest.index_type
        index.rebuild(self.store.iter_embeddings())
        self.index = index
        self._index_stale = False

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
            if filter:
                allowed = self.store.filter_ids(filter)
                if len(allowed) == 0:
                    return [[] for _ in queries]
                if len(allowed) <= EXACT_FILTER_MAX:
                    hits = _exact_search(queries, self.store.embeddings(allowed), allowed, k)
                else:
                    hits = self.index.search_lists(queries, k, allowed_ids=allowed, exact=self.store.embeddings,
                                                   ef_search=ef_search, nprobe=nprobe)
            else:
                hits = self.index.search_lists(queries, k, exact=self.store.embeddings, ef_search=ef_search, nprobe=nprobe)
            names = self.store.doc_ids({i for row in hits for i, _ in row})
        return [[(names[i], score) for i, score in row if i in names] for row in hits]

    def get(self, doc_ids: Sequence[str]) -> list[Document | None]:
        """Documents in the order asked; None for an id not in the collection."""
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
        """Documents in the collection (every one has exactly one live vector)."""
        return self._count

    def stats(self) -> dict[str, Any]:
        """Counts, index and model settings and sizes on disk, for ``twostage info``."""
        with self._lock:
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

    def _token_stats(self) -> dict[str, Any]:
        """Token store size for ``stats()``: passages with tokens and mean stored bytes per passage."""
        if self.token_store is None:
            return {}
        tokens = self.token_store.stats()
        return {
            "token_encoding": self.token_store.encoding,
            "token_passages": tokens.passages,
            "tokens_per_passage": round(tokens.tokens_per_passage, 1),
            "token_bytes_per_passage": round(tokens.bytes_per_passage, 1),
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
                self.store.close()

    def __enter__(self) -> "Collection":
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

