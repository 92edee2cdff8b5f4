"""The document store: one SQLite file (WAL, synchronous=FULL) holding every document, its metadata and its embedding.

It is the collection's source of truth: the FAISS index can always be rebuilt from it. Internal ids come from
``AUTOINCREMENT`` and are never reused, so a stale vector can never alias a newer document.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import passage_store
from .documents import Document, Passage, text_hash
from .errors import StorageError
from .metadata_filter import _match_clause
from .passage_store import StoredPassage

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    internal_id  INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id       TEXT NOT NULL UNIQUE,
    text         TEXT NOT NULL,
    title        TEXT,
    metadata     TEXT NOT NULL DEFAULT '{}',
    content_hash TEXT NOT NULL,
    embedding    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: ids per ``IN (...)`` query, under SQLite's oldest variable limit (999)
CHUNK = 900


@dataclass
class UpsertResult:
    """What an upsert did: ``new_ids`` are the fresh internal ids, aligned with the stored rows (one per passage)."""

    added: list[int] = field(default_factory=list)  #: first-row internal ids of documents whose doc_id was new
    replaced: dict[str, int] = field(default_factory=dict)  #: doc_id -> the internal id its old first row had
    new_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    removed_ids: list[int] = field(default_factory=list)  #: every row (passage) the old versions had
    keys: list[str] = field(default_factory=list)  #: the stored rows' keys, aligned with ``new_ids``
    bodies: list[str] = field(default_factory=list)  #: what each row's encoders (and BM25) read: context and text


def content_hash(doc: Document) -> str:
    """Hash of everything stored for a document except its embedding: equal hash = nothing to re-index."""
    payload = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False, default=str)
    return text_hash(payload)


class DocumentStore:
    """Documents and embeddings in SQLite. Every write method commits its own transaction (or joins an open one)."""

    def __init__(self, path: str | Path, *, read_only: bool = False, create: bool = True):
        """Open (or with ``create``, make) the store; ``read_only`` opens it for reading where nothing may be written.
        Without ``create`` a file lacking the documents table (emptied, or not ours) is a StorageError, left untouched."""
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._depth = 0
        if read_only:
            self._con = _connect_read_only(self.path)
            self._passages = passage_store.has_tables(self._con)  # False: written before passages existed
            return
        self._con = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        if not create and not self._has_docs_table():
            self._con.close()
            raise StorageError(
                f"{self.path} holds no documents table (emptied or replaced); nothing was changed: restore it from a backup"
            )
        mode = self._con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"{self.path}: cannot switch SQLite to WAL mode (got {mode!r})")
        self._con.execute("PRAGMA synchronous=FULL")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._con.execute(statement)
            passage_store.create_tables(self._con)
        self._passages = True

    def _has_docs_table(self) -> bool:
        return (
            self._con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'docs'").fetchone()
            is not None
        )

    def check(self, full: bool = False) -> list[str]:
        """SQLite's own ``quick_check`` (or with ``full`` the slower ``integrity_check``): empty when the file is sound."""
        pragma = "integrity_check" if full else "quick_check"
        try:
            with self._lock:
                rows = [str(r[0]) for r in self._con.execute(f"PRAGMA {pragma}(20)")]
        except sqlite3.DatabaseError as err:
            return [str(err)]
        return [] if rows == ["ok"] else rows

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE ... COMMIT``; nested uses join the outermost. Rolls back on an exception."""
        with self._lock:
            if self._depth == 0:
                self._con.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._con
            except BaseException:
                self._depth -= 1
                if self._depth == 0 and self._con.in_transaction:  # SQLite may have rolled back itself (disk full)
                    self._con.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._con.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection under the store's lock, for plain reads of other tables in this file (the token store)."""
        with self._lock:
            yield self._con

    def _bump_generation(self) -> None:
        self._con.execute(
            "INSERT INTO meta(key, value) VALUES ('generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    @property
    def generation(self) -> int:
        """Counter bumped in the same transaction as every change: tells a stale FAISS file from a current one."""
        return int(self.get_meta("generation", 0))

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        try:
            return json.loads(row[0]) if row else default
        except (TypeError, ValueError):
            raise StorageError(
                f"{self.path}: its meta value {key!r} is not JSON ({str(row[0])[:40]!r}): the file was edited or "
                f"damaged; run 'twostage check {self.path.parent}'"
            ) from None

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key``."""
        with self.transaction():
            self._con.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # ------------------------------------------------------------------ writes
    def upsert(
        self, docs: Sequence[Document], embeddings: np.ndarray, splits: Sequence[Sequence[Passage]] | None = None
    ) -> UpsertResult:
        """Insert documents with their embeddings in one transaction; an existing doc_id is replaced, every passage of
        its old version with it (fresh internal ids). ``splits`` gives each document's passages, one embedding row per
        passage in order (``indexes.passage_store``); without it every document is one row, as before passages."""
        docs = list(docs)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        rows = [_row(doc) for doc in docs]
        doc_ids = [row[0] for row in rows]
        if splits is not None and len(splits) != len(docs):
            raise ValueError(f"{len(docs)} documents but {len(splits)} splits")
        units = [
            passage_store.units(doc, row, None if splits is None else splits[n], content_hash)
            for n, (doc, row) in enumerate(zip(docs, rows))
        ]
        total = sum(len(u) for u in units)
        if embeddings.ndim != 2 or len(embeddings) != total:
            raise ValueError(f"expected embeddings of shape ({total}, dim), got {embeddings.shape}")
        if len(set(doc_ids)) != len(doc_ids):
            dup = next(d for d in doc_ids if doc_ids.count(d) > 1)
            raise ValueError(f"document id {dup!r} appears twice in one upsert")
        if not docs:
            return UpsertResult()
        with self.transaction():
            dimension = self.get_meta("dimension")
            if dimension is None:
                self.set_meta("dimension", int(embeddings.shape[1]))
            elif dimension != embeddings.shape[1]:
                raise ValueError(f"embeddings have dimension {embeddings.shape[1]}, the store holds {dimension}")
            existing = passage_store.unit_ids(self._con, doc_ids)
            removed = [i for found in existing.values() for i, _ in found]
            self._con.executemany("DELETE FROM docs WHERE internal_id = ?", [(i,) for i in removed])
            passage_store.remove(self._con, list(existing), removed)
            new_ids = np.empty(total, dtype=np.int64)
            keys: list[str] = []
            bodies: list[str] = []
            at = 0
            for n, (doc, row) in enumerate(zip(docs, rows)):
                first = at
                for unit in units[n]:
                    cursor = self._con.execute(
                        "INSERT INTO docs(doc_id, text, title, metadata, content_hash, embedding) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (*unit, embeddings[at].tobytes()),
                    )
                    new_ids[at] = cast(int, cursor.lastrowid)
                    keys.append(unit[0])
                    bodies.append(f"{unit[2]}. {unit[1]}" if unit[2] else unit[1])
                    at += 1
                if splits is not None:
                    passage_store.write(self._con, doc, row, splits[n], new_ids[first:at])
            self._bump_generation()
        starts = np.cumsum([0] + [len(u) for u in units[:-1]])
        added = [int(new_ids[s]) for d, s in zip(doc_ids, starts) if d not in existing]
        replaced = {d: found[0][0] for d, found in existing.items()}
        return UpsertResult(
            added=added, replaced=replaced, new_ids=new_ids, removed_ids=removed, keys=keys, bodies=bodies
        )

    def delete(self, doc_ids: Sequence[str]) -> tuple[list[int], list[str]]:
        """Delete by doc_id, every passage with its document, in one transaction; returns (deleted rows' internal ids,
        doc_ids that were not there)."""
        unique = list(dict.fromkeys(str(d) for d in doc_ids))
        with self.transaction():
            existing = passage_store.unit_ids(self._con, unique)
            removed = [i for found in existing.values() for i, _ in found]
            if existing:
                self._con.executemany("DELETE FROM docs WHERE internal_id = ?", [(i,) for i in removed])
                passage_store.remove(self._con, list(existing), removed)
                self._bump_generation()
        return removed, [d for d in unique if d not in existing]

    def keys_of(self, doc_ids: Sequence[str]) -> list[str]:
        """The stored row keys (the document's own id, then its passages') of these documents."""
        with self._lock:
            found = passage_store.unit_ids(self._con, [str(d) for d in doc_ids])
        return [key for rows in found.values() for _, key in rows]

    def passages(self, keys: Sequence[str]) -> dict[str, StoredPassage]:
        """Stored row key -> the passage it holds, with its document's id, title and place (``passage_store``)."""
        with self._lock:
            return passage_store.passages_of(self._con, [str(k) for k in keys], self._passages)

    # ------------------------------------------------------------------ reads
    def _internal_ids_of(self, doc_ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._lock:
            for chunk in _chunks(list(doc_ids)):
                marks = ",".join("?" * len(chunk))
                found.update(
                    self._con.execute(f"SELECT doc_id, internal_id FROM docs WHERE doc_id IN ({marks})", chunk)
                )
        return found

    def _select(self, columns: str, key: str, values: Sequence[Any]) -> dict[Any, tuple]:
        """Rows keyed by ``key`` for the given values, fetched in chunks."""
        rows: dict[Any, tuple] = {}
        with self._lock:
            for chunk in _chunks(list(values)):
                marks = ",".join("?" * len(chunk))
                for row in self._con.execute(f"SELECT {key}, {columns} FROM docs WHERE {key} IN ({marks})", chunk):
                    rows[row[0]] = row[1:]
        return rows

    def get(self, doc_ids: Sequence[str]) -> list[Document | None]:
        """Documents in the order asked; None where a doc_id is not stored."""
        ids = [str(d) for d in doc_ids]
        rows = {k: (k, *v[:3]) for k, v in self._split_documents(ids).items()}
        rows.update(self._select("doc_id, text, title, metadata", "doc_id", [d for d in ids if d not in rows]))
        return [_document(rows[d]) if d in rows else None for d in ids]

    def _split_documents(self, doc_ids: Sequence[str]) -> dict[str, tuple]:
        if not self._passages:
            return {}
        with self._lock:
            return passage_store.split_documents(self._con, doc_ids)

    def doc_ids(self, internal_ids: Sequence[int]) -> dict[int, str]:
        """internal id -> doc_id for the ids still stored (deleted ones are simply absent)."""
        rows = self._select("doc_id", "internal_id", [int(i) for i in internal_ids])
        return {i: row[0] for i, row in rows.items()}

    def hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc_id -> :func:`content_hash` for the stored ones, to skip unchanged documents on a re-run."""
        ids = [str(d) for d in doc_ids]
        found = {d: row[3] for d, row in self._split_documents(ids).items()}
        rows = self._select("content_hash", "doc_id", [d for d in ids if d not in found])
        return found | {d: row[0] for d, row in rows.items()}

    def embeddings(self, internal_ids: Sequence[int]) -> np.ndarray:
        """Stored vectors for the given internal ids, in order (KeyError for an id not stored)."""
        ids = [int(i) for i in internal_ids]
        rows = self._select("embedding", "internal_id", ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"internal ids not stored: {missing[:5]}")
        dimension = int(self.get_meta("dimension", 0))
        if not ids:
            return np.empty((0, dimension), dtype=np.float32)
        return self._vectors([rows[i][0] for i in ids], dimension)

    def _vectors(self, blobs: Sequence[Any], dimension: int) -> np.ndarray:
        """Embedding blobs as one float32 matrix; a blob that is not ``dimension`` floats is a StorageError."""
        if any(not isinstance(b, bytes) or len(b) != 4 * dimension for b in blobs):
            raise StorageError(
                f"{self.path}: a stored embedding is not {dimension} float32 values (the file was edited or "
                f"damaged); run 'twostage check {self.path.parent}'"
            )
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1).copy()

    def embeddings_by_doc_id(self, doc_ids: Sequence[str]) -> np.ndarray:
        """Stored vectors for the given doc ids, in order (KeyError for a doc id not stored)."""
        found = self._internal_ids_of([str(d) for d in doc_ids])
        missing = [d for d in doc_ids if str(d) not in found]
        if missing:
            raise KeyError(f"doc ids not stored: {missing[:5]}")
        return self.embeddings([found[str(d)] for d in doc_ids])

    def iter_documents(self, batch: int = 1_000) -> Iterator[Document]:
        """Every document (a split one whole, once) in storage order, ``batch`` rows per read."""
        for row in passage_store.iter_document_rows(self.reading, self._passages, batch):
            yield _document(row)

    def iter_passages(self, batch: int = 1_000) -> Iterator[Document]:
        """Every stored row as a Document: its key, the passage's text and what is encoded before it as ``title``."""
        for row in passage_store.iter_rows(self.reading, batch):
            yield _document(row)

    def iter_embeddings(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All ``(internal_ids, vectors)`` in id order, ``batch`` at a time, without holding a read open between batches."""
        last = -1
        while True:
            with self._lock:
                rows = self._con.execute(
                    "SELECT internal_id, embedding FROM docs WHERE internal_id > ? ORDER BY internal_id LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, self._vectors([r[1] for r in rows], int(self.get_meta("dimension", 0)))
            last = int(ids[-1])

    def filter_ids(self, filter: Mapping[str, Any]) -> np.ndarray:
        """Internal ids whose metadata matches every ``key=value``; "2020" matches 2020 and "true" matches true."""
        clauses, params = [], []
        for key, value in filter.items():
            clause, values = _match_clause(str(key), value)
            clauses.append(clause)
            params.extend(values)
        where = " AND ".join(f"({c})" for c in clauses) or "1"
        with self._lock:
            rows = self._con.execute(
                f"SELECT internal_id FROM docs WHERE {where} ORDER BY internal_id", params
            ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def count(self) -> int:
        """Stored rows: passages (a document written before passages existed, or a short one, is one)."""
        with self._lock:
            return int(self._con.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def document_count(self) -> int:
        """Documents: rows less every split document's second and later passages."""
        with self._lock:
            extra = passage_store.extra_passages(self._con) if self._passages else 0
            return int(self._con.execute("SELECT COUNT(*) FROM docs").fetchone()[0]) - extra

    def vacuum(self) -> None:
        """Rewrite the file without its free pages (SQLite ``VACUUM``, atomic): gives back the space a large rewrite,
        such as converting stored tokens to a smaller encoding, left free."""
        with self._lock:
            if self._depth:
                raise RuntimeError("VACUUM cannot run inside a transaction")
            self._con.execute("VACUUM")

    def internal_ids(self) -> np.ndarray:
        """Every stored internal id, sorted: the set a vector index must hold, compared by content, not by counters."""
        with self._lock:
            rows = self._con.execute("SELECT internal_id FROM docs ORDER BY internal_id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def close(self) -> None:
        """Checkpoint the WAL into the main file (best effort) and close the connection."""
        with self._lock:
            try:
                if not self.read_only:
                    self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._con.close()


def open_store(path: Path) -> DocumentStore:
    """An existing collection's store, for writing where its directory allows it, else read-only (reads still work)."""
    if os.access(path.parent, os.W_OK) and os.access(path, os.W_OK):
        try:
            return DocumentStore(path, create=False)
        except sqlite3.OperationalError as err:
            if "readonly" not in str(err) and "unable to open" not in str(err):
                raise
    return DocumentStore(path, read_only=True)


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection; where SQLite cannot even create its shared-memory file, the file is read as immutable."""
    last: sqlite3.Error | None = None
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        con = sqlite3.connect(
            f"{path.resolve().as_uri()}?{flags}", uri=True, isolation_level=None, check_same_thread=False, timeout=30
        )
        try:
            con.execute("SELECT COUNT(*) FROM docs").fetchone()
            return con
        except sqlite3.Error as err:
            con.close()
            last = err
    raise storage_error(last, path)  # type: ignore[arg-type]


def storage_error(err: BaseException, path: Path) -> StorageError:
    """One line for a SQLite or OS error on the collection's files: what happened and what to do about it."""
    text = " ".join(str(err).split()) or type(err).__name__
    directory = path.parent if path.suffix else path
    code = getattr(err, "errno", None)
    lowered = text.lower()
    if code == errno.ENOSPC or "disk is full" in lowered or "no space" in lowered:
        return StorageError(
            f"{directory}: the disk is full ({text}); free some space and run the same command again "
            f"(the collection keeps its last committed state)"
        )
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in lowered or "read-only" in lowered:
        return StorageError(f"{directory} is read-only ({text}): it can be searched but not changed")
    if isinstance(err, sqlite3.DatabaseError) and (
        "malformed" in lowered or "not a database" in lowered or "corrupt" in lowered
    ):
        return StorageError(
            f"{path} is damaged ({text}); run 'twostage check {directory}' to see what can be "
            f"saved, or restore it from a backup"
        )
    return StorageError(f"{path}: {text}")


@contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """Turn SQLite and OS errors raised inside into :func:`storage_error`'s one-line StorageError."""
    try:
        yield
    except StorageError:  # already one line (an inner block's)
        raise
    except (sqlite3.Error, OSError) as err:
        raise storage_error(err, path) from None


def _row(doc: Document) -> tuple[str, str, str | None, str, str]:
    if not isinstance(doc.id, str) or not doc.id:
        raise ValueError(f"document id must be a non-empty string (got {doc.id!r})")
    if not isinstance(doc.text, str):
        raise ValueError(f"document {doc.id!r}: text must be a string")
    try:
        metadata = json.dumps(doc.metadata or {}, ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"document {doc.id!r}: metadata is not JSON-serialisable ({err})") from None
    return doc.id, doc.text, doc.title, metadata, content_hash(doc)


def _document(row: tuple) -> Document:
    doc_id, text, title, metadata = row
    try:
        fields = json.loads(metadata)
    except (TypeError, ValueError):
        fields = None
    if not isinstance(fields, dict):
        raise StorageError(
            f"document {doc_id!r}: its stored metadata is not a JSON object ({str(metadata)[:40]!r}): the documents "
            f"file was edited or damaged; 'twostage check' lists such rows, 'twostage delete' removes one"
        )
    return Document(id=doc_id, text=text, title=title, metadata=fields)


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]
