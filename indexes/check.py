"""``twostage check DIR [--repair]``: is a collection whole, and what can be rebuilt from SQLite, its source of truth.

Checks SQLite (``integrity_check``), the manifest against SQLite (dimension, generation, counts), the vector index's
ids against the documents' ids, token rows (MaxSim) and any FTS5 table against the documents. ``repair`` takes the
writer lock and rebuilds what SQLite can rebuild (the vector index, the manifest's counts and dimension, token rows of
deleted documents, an FTS5 index); what it cannot (a damaged SQLite file, a lost manifest) is said, with what to do.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import passage_store
from .check_content import inspect_content, repair_content
from .collection import DOCUMENTS, MANIFEST, VECTORS, Collection, Manifest
from .document_store import DocumentStore, storage_errors
from .errors import CollectionError
from .lexical import TABLE as LEXICAL_TABLE
from .lexical import LexicalIndex
from .lock import WriterLock
from .vector_index import vector_index_class


@dataclass
class CheckReport:
    """What ``check`` found (``problems``), fixed (``repaired``) and could not fix (``unrepairable``)."""

    path: str
    documents: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)

    @property
    def status(self) -> int:
        """The command's exit status: 0 whole (or repaired), 1 problems that ``--repair`` can fix, 2 beyond repair."""
        if self.unrepairable:
            return 2
        return 0 if not self.problems or self.repaired else 1


def check_collection(path: str | Path, *, repair: bool = False, wait: float | None = None) -> CheckReport:
    """Check the collection at ``path``; with ``repair``, rebuild from SQLite what can be rebuilt (under the lock)."""
    path = Path(path)
    report = CheckReport(str(path))
    if not (path / MANIFEST).is_file() or not (path / DOCUMENTS).is_file():
        missing = MANIFEST if not (path / MANIFEST).is_file() else DOCUMENTS
        raise CollectionError(f"{path} is not a collection ({missing} is missing)")
    if not repair:
        _inspect(path, report)
        return report
    with WriterLock(path).holding(Collection.lock_wait if wait is None else wait):
        repairs = _inspect(path, report)
        if report.problems and not report.unrepairable:
            _repair(path, report, repairs)
    return report


def _inspect(path: Path, report: CheckReport) -> dict[str, Any]:
    """Fill ``report.problems`` (and ``unrepairable``) without writing anything; returns the content repairs due."""
    try:
        manifest = Collection._read_manifest(path / MANIFEST)
    except CollectionError as err:
        report.problems.append(str(err))
        report.unrepairable.append(
            f"{MANIFEST} records the bi-encoder and cannot be rebuilt from SQLite: restore it "
            f"from a backup (or re-index the documents into a new directory)"
        )
        return {}
    db = path / DOCUMENTS
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as err:
        report.problems.append(f"{db}: cannot be opened ({err})")
        report.unrepairable.append(f"{DOCUMENTS} cannot be opened: restore it from a backup")
        return {}
    try:
        return _inspect_sqlite(path, con, manifest, report)
    except sqlite3.DatabaseError as err:  # a table or column another command reads is missing or unreadable
        report.problems.append(f"{db}: {err}")
        report.unrepairable.append(f"{DOCUMENTS} lacks what this version reads: restore it from a backup")
        return {}
    finally:
        con.close()


def _inspect_sqlite(path: Path, con: sqlite3.Connection, manifest: Manifest, report: CheckReport) -> dict[str, Any]:
    db = path / DOCUMENTS
    try:
        rows = [str(r[0]) for r in con.execute("PRAGMA integrity_check(20)")]
        tables = {r[0]: (r[1] or "") for r in con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        rows, tables = [str(err)], {}
    if rows != ["ok"]:
        first = " ".join(rows[0].split())[:300]  # SQLite's first finding can span lines; one line here
        more = f" (and {len(rows) - 1} more findings)" if len(rows) > 1 else ""
        report.problems.append(f"{db} fails SQLite's integrity_check: {first}{more}")
        report.unrepairable.append(
            f"{DOCUMENTS} is damaged and is the source of truth: restore it from a backup "
            f"(the sqlite3 shell's '.recover' may save the rows it can still read)"
        )
        return {}
    if "docs" not in tables:
        report.problems.append(f"{db} holds no documents table (emptied or replaced)")
        report.unrepairable.append(f"{DOCUMENTS} has lost the documents: restore it from a backup")
        return {}
    stored = np.fromiter(
        (r[0] for r in con.execute("SELECT internal_id FROM docs ORDER BY internal_id")), dtype=np.int64
    )
    report.documents = len(stored)
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    generation, dimension = _meta_int(meta, "generation", 0) or 0, _meta_int(meta, "dimension", None)
    # embeddings are measured against SQLite's own record (a manifest whose dimension differs is a finding below)
    content = inspect_content(con, tables, manifest, manifest.dimension if dimension is None else int(dimension))
    if dimension is not None and int(dimension) != manifest.dimension:
        report.problems.append(
            f"{MANIFEST} says dimension {manifest.dimension} but the stored embeddings have {dimension}"
        )
    if manifest.generation > generation:
        report.problems.append(
            f"{DOCUMENTS} is at generation {generation}, behind the manifest's "
            f"{manifest.generation}: documents were lost (a truncated or older copy); repair "
            f"rebuilds the index from the {len(stored)} that remain"
        )
    documents = len(stored) - (passage_store.extra_passages(con) if "passages" in tables else 0)
    if manifest.document_count != documents:
        report.problems.append(f"{MANIFEST} counts {manifest.document_count} documents, {DOCUMENTS} holds {documents}")
    _inspect_index(path, manifest, stored, report)
    _inspect_tables(con, tables, report)
    report.problems.extend(content.problems)
    report.unrepairable.extend(content.unrepairable)
    return content.repairs


def _meta_int(meta: dict[str, Any], key: str, default: int | None) -> int | None:
    """An integer meta value (stored as JSON text); one that is not is reported by ``check_content``."""
    try:
        return int(meta[key]) if key in meta else default
    except (TypeError, ValueError):
        return default


def _inspect_index(path: Path, manifest: Manifest, stored: np.ndarray, report: CheckReport) -> None:
    if (path / VECTORS).is_dir():
        report.problems.append(f"{VECTORS} is a directory, not the vector index")
        if any((path / VECTORS).iterdir()):
            report.unrepairable.append(f"{VECTORS} is a directory holding files: move it away, then repair")
        return
    try:
        index = vector_index_class(manifest.vector_index).load(path / VECTORS)
    except CollectionError as err:
        report.problems.append(f"{VECTORS} cannot be loaded ({err})")
        return
    if index.dimension != manifest.dimension:
        report.problems.append(f"{VECTORS} has dimension {index.dimension}, the manifest {manifest.dimension}")
        return
    live = index.ids()
    lacking = len(np.setdiff1d(stored, live, assume_unique=True))
    orphans = len(np.setdiff1d(live, stored, assume_unique=True))
    if lacking:
        report.problems.append(f"{lacking} document(s) have no vector in {VECTORS} (they cannot be found by search)")
    if orphans:
        report.problems.append(f"{orphans} vector(s) in {VECTORS} belong to no document")


def _inspect_tables(con: sqlite3.Connection, tables: dict[str, str], report: CheckReport) -> None:
    """Token rows (MaxSim) and token statistics of deleted documents; an FTS5 table out of step with the documents."""
    for table in ("tokens", "doc_terms"):
        if table in tables:
            orphans = con.execute(
                f"SELECT COUNT(*) FROM {table} WHERE doc_id NOT IN (SELECT doc_id FROM docs)"
            ).fetchone()[0]
            if orphans:
                report.problems.append(f"{orphans} row(s) of table {table!r} belong to no document")
    documents = con.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
    for name in _fts_tables(tables):
        rows = con.execute(f'SELECT COUNT(*) FROM "{name}_docsize"').fetchone()[0]
        strays = con.execute(
            f'SELECT COUNT(*) FROM "{name}_docsize" WHERE id NOT IN (SELECT internal_id FROM docs)'
        ).fetchone()[0]
        if rows != documents or strays:
            report.problems.append(
                f"full-text table {name!r} indexes {rows} rows ({strays} of no document) for {documents} documents"
            )


def _fts_tables(tables: dict[str, str]) -> list[str]:
    """FTS5 tables whose per-row sizes (``<name>_docsize``) tell which rows they index."""
    return [name for name, sql in tables.items() if "using fts5" in sql.lower() and f"{name}_docsize" in tables]


def _rebuild_fts(store: DocumentStore, con: sqlite3.Connection, name: str, report: CheckReport) -> None:
    """The collection's own lexical table is re-indexed from the stored texts; another FTS5 table by FTS5's 'rebuild'."""
    try:
        if name == LEXICAL_TABLE:
            LexicalIndex(store).build()
        else:
            con.execute(f'INSERT INTO "{name}"("{name}") VALUES (\'rebuild\')')
        report.repaired.append(f"rebuilt full-text table {name!r} from the stored texts")
    except sqlite3.Error as err:
        report.unrepairable.append(f"full-text table {name!r} cannot be rebuilt here ({err})")


def _repair(path: Path, report: CheckReport, repairs: dict[str, Any]) -> None:
    """Rebuild from SQLite: meta records, orphan token rows, FTS5 tables, the manifest's fingerprint, dimension and
    counts, the vector index (an empty directory in its place is removed first)."""
    manifest = Collection._read_manifest(path / MANIFEST)
    if (path / VECTORS).is_dir():
        (path / VECTORS).rmdir()
    with storage_errors(path / DOCUMENTS):
        store = DocumentStore(path / DOCUMENTS, create=False)
        try:
            with store.transaction() as con:
                report.repaired.extend(repair_content(con, repairs))
            if repairs.get("lexical"):
                LexicalIndex(store).build()
                report.repaired.append(f"rebuilt the lexical table {LEXICAL_TABLE!r} from the stored texts")
            if "model_fingerprint" in repairs:
                manifest.model_fingerprint = repairs["model_fingerprint"]
                report.repaired.append(f"{MANIFEST}: bi-encoder fingerprint restored from {DOCUMENTS}")
            dimension = store.get_meta("dimension")
            if dimension is not None and int(dimension) != manifest.dimension:
                manifest.dimension = int(dimension)
                report.repaired.append(f"{MANIFEST}: dimension set to the stored embeddings' {dimension}")
            with store.transaction() as con:
                tables = {
                    r[0]: (r[1] or "") for r in con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
                }
                for table in ("tokens", "doc_terms"):
                    if table in tables:
                        gone = con.execute(
                            f"DELETE FROM {table} WHERE doc_id NOT IN (SELECT doc_id FROM docs)"
                        ).rowcount
                        if gone:
                            report.repaired.append(f"removed {gone} row(s) of {table!r} that belonged to no document")
                for name in _fts_tables(tables):
                    if any("full-text table " + repr(name) in p for p in report.problems):
                        _rebuild_fts(store, con, name, report)
            manifest.generation = store.generation
            collection = Collection(path, manifest, store, None)  # type: ignore[arg-type]
            collection._rebuild_index(manifest.factory)
            collection._dirty = True
            collection._commit_locked()
        finally:
            store.close()
    report.repaired.append(f"rebuilt {VECTORS} and {MANIFEST} from the {report.documents} stored documents")
