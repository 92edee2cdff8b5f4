"""Passages under their documents, in the document store's SQLite file and transactions.

A document that fits the bi-encoder's window is one row of ``docs``, keyed by its id, exactly as before passages
existed (collections written before this change are all such documents). A longer document is one row of
``documents`` (its whole text, title, metadata and content hash) and one ``docs`` row per passage, keyed
``id``, ``id\\x1f1``, ``id\\x1f2`` ... (:func:`indexes.documents.passage_key`), holding the passage's text, the
document's metadata (so filters and BM25 see passages) and the passage's vector. ``passages`` records each passage row's
place in its document: number, character offsets, page and heading path. Every write of a document replaces all of
its rows in the store's one transaction, so no passage outlives or precedes its document.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .documents import PASSAGE_SEPARATOR, Document, Passage, passage_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    doc_id       TEXT PRIMARY KEY,
    text         TEXT NOT NULL,
    title        TEXT,
    metadata     TEXT NOT NULL DEFAULT '{}',
    content_hash TEXT NOT NULL,
    passages     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS passages (
    internal_id INTEGER PRIMARY KEY,
    doc_id      TEXT NOT NULL,
    number      INTEGER NOT NULL,
    start       INTEGER NOT NULL,
    end         INTEGER NOT NULL,
    page        INTEGER,
    headings    TEXT
);
CREATE INDEX IF NOT EXISTS passages_by_doc ON passages(doc_id);
"""
#: the byte after :data:`PASSAGE_SEPARATOR`: keys ``id\x1f...`` sort in [``id\x1f``, ``id\x20``)
_AFTER_SEPARATOR = chr(ord(PASSAGE_SEPARATOR) + 1)
_CHUNK = 900


@dataclass
class StoredPassage:
    """A stored passage as a hit shows it: its document, number (0-based) of ``count``, offsets, page, headings."""

    key: str
    doc_id: str
    number: int
    count: int
    start: int
    end: int
    text: str
    title: str | None = None  #: the document's title
    metadata: dict[str, Any] = field(default_factory=dict)
    page: int | None = None
    headings: list[str] = field(default_factory=list)
    context: str | None = None  #: what the encoders read before the text (the title, and a split one's headings)


def passage_rows(splits: Sequence[Sequence[Passage]] | None, documents: int) -> list[range]:
    """Per document, the rows (passages) it has among an upsert's embeddings, tokens and terms: one each without
    ``splits``."""
    sizes = [1] * documents if splits is None else [max(len(split), 1) for split in splits]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    return [range(starts[i], starts[i + 1]) for i in range(documents)]


def splits_to_json(splits: Sequence[Sequence[Passage]]) -> str:
    """Splits as JSON (offsets, page and headings; each passage's text is its document's slice)."""
    return json.dumps([[[p.start, p.end, p.page, p.headings] for p in split] for split in splits], ensure_ascii=False)


def splits_from_json(text: str, docs: Sequence[Document]) -> list[list[Passage]]:
    """The splits :func:`splits_to_json` wrote, for the same documents."""
    return [
        [Passage(start, end, doc.text[start:end], page, list(headings)) for start, end, page, headings in split]
        for split, doc in zip(json.loads(text), docs)
    ]


def units(doc: Document, row: tuple, passages: Sequence[Passage] | None, content_hash: Any) -> list[tuple]:
    """The ``docs`` rows of one document: itself (``row``), or (split) one per passage holding the passage's text, the
    title and heading path it is encoded with, and the document's metadata (for filters)."""
    if passages is None or len(passages) <= 1:
        return [row]
    _, _, title, metadata, _ = row
    out = []
    for n, passage in enumerate(passages):
        unit = Document(passage_key(doc.id, n), passage.text, passage.context(title), doc.metadata)
        out.append((unit.id, unit.text, unit.title, metadata, content_hash(unit)))
    return out


def iter_rows(con_reader: Any, batch: int = 1_000) -> Iterator[tuple]:
    """``(key, text, title, metadata)`` of every stored row (passage) in storage order, ``batch`` rows per read."""
    last = -1
    while True:
        with con_reader() as con:
            rows = con.execute(
                "SELECT internal_id, doc_id, text, title, metadata FROM docs WHERE internal_id > ? "
                "ORDER BY internal_id LIMIT ?",
                (last, batch),
            ).fetchall()
        if not rows:
            return
        yield from (row[1:] for row in rows)
        last = int(rows[-1][0])


def create_tables(con: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            con.execute(statement)


def has_tables(con: sqlite3.Connection) -> bool:
    """False for a file written before passages existed and opened read-only (a writable open creates the tables)."""
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'passages'").fetchone() is not None


def unit_ids(con: sqlite3.Connection, doc_ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """doc_id -> its stored rows' ``(internal id, key)``, first passage first, for the ids stored."""
    found: dict[str, list[tuple[int, str]]] = {}
    for doc_id in doc_ids:
        rows = con.execute(
            "SELECT internal_id, doc_id FROM docs WHERE doc_id = ? OR (doc_id >= ? AND doc_id < ?) ORDER BY internal_id",
            (doc_id, doc_id + PASSAGE_SEPARATOR, doc_id + _AFTER_SEPARATOR),
        ).fetchall()
        if rows:
            found[doc_id] = [(int(i), str(k)) for i, k in rows]
    return found


def remove(con: sqlite3.Connection, doc_ids: Sequence[str], internal_ids: Sequence[int]) -> None:
    """Drop the documents' whole-text rows and their passages' place records (their ``docs`` rows go separately)."""
    con.executemany("DELETE FROM documents WHERE doc_id = ?", [(d,) for d in doc_ids])
    con.executemany("DELETE FROM passages WHERE internal_id = ?", [(int(i),) for i in internal_ids])


def write(con: sqlite3.Connection, doc: Document, row: tuple, passages: Sequence[Passage], internal_ids: Any) -> None:
    """Record a split document: its whole-text row when it has several passages, and every passage's place."""
    if len(passages) > 1:
        doc_id, text, title, metadata, content_hash = row
        con.execute(
            "INSERT INTO documents(doc_id, text, title, metadata, content_hash, passages) VALUES (?, ?, ?, ?, ?, ?)",
            (doc_id, text, title, metadata, content_hash, len(passages)),
        )
    con.executemany(
        "INSERT INTO passages(internal_id, doc_id, number, start, end, page, headings) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                int(i),
                doc.id,
                n,
                p.start,
                p.end,
                p.page,
                json.dumps(p.headings, ensure_ascii=False) if p.headings else None,
            )
            for n, (p, i) in enumerate(zip(passages, internal_ids))
        ],
    )


def split_documents(con: sqlite3.Connection, doc_ids: Sequence[str]) -> dict[str, tuple]:
    """doc_id -> ``(text, title, metadata, content_hash)`` of the documents stored as several passages."""
    found: dict[str, tuple] = {}
    for chunk in _chunks(list(doc_ids)):
        marks = ",".join("?" * len(chunk))
        for row in con.execute(
            f"SELECT doc_id, text, title, metadata, content_hash FROM documents WHERE doc_id IN ({marks})", chunk
        ):
            found[row[0]] = row[1:]
    return found


def extra_passages(con: sqlite3.Connection) -> int:
    """Rows of ``docs`` that are a document's second or later passage: rows minus this is the document count."""
    return int(con.execute("SELECT COUNT(*) FROM passages WHERE number > 0").fetchone()[0])


def passages_of(con: sqlite3.Connection, keys: Sequence[str], present: bool) -> dict[str, StoredPassage]:
    """key -> :class:`StoredPassage` for the stored keys; a row without a place record (written before passages
    existed) is its whole document: passage 0 of 1, offsets 0..len(text)."""
    out: dict[str, StoredPassage] = {}
    if present:
        sql = (
            "SELECT d.doc_id, d.text, d.title, d.metadata, p.doc_id, p.number, p.start, p.end, p.page, p.headings, "
            "m.title, m.passages FROM docs d LEFT JOIN passages p ON p.internal_id = d.internal_id "
            "LEFT JOIN documents m ON m.doc_id = p.doc_id WHERE d.doc_id IN ({})"
        )
    else:
        sql = (
            "SELECT d.doc_id, d.text, d.title, d.metadata, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL "
            "FROM docs d WHERE d.doc_id IN ({})"
        )
    for chunk in _chunks(list(dict.fromkeys(keys))):
        for key, text, title, metadata, doc_id, number, start, end, page, headings, doc_title, count in con.execute(
            sql.format(",".join("?" * len(chunk))), chunk
        ):
            split = doc_id is not None and count is not None
            out[key] = StoredPassage(
                key=key,
                doc_id=doc_id if doc_id is not None else key,
                number=int(number or 0),
                count=int(count) if split else 1,
                start=int(start or 0),
                end=int(end) if end is not None else len(text),
                text=text,
                title=doc_title if split else title,
                metadata=json.loads(metadata),
                page=page,
                headings=json.loads(headings) if headings else [],
                context=title,
            )
    return out


def iter_document_rows(con_reader: Any, present: bool, batch: int = 1_000) -> Iterator[tuple]:
    """``(doc_id, text, title, metadata)`` of every document in storage order: one row per document, a split one's
    whole text from ``documents``."""
    last = -1
    sql = (
        "SELECT d.internal_id, d.doc_id, COALESCE(m.text, d.text), CASE WHEN m.doc_id IS NULL THEN d.title "
        "ELSE m.title END, COALESCE(m.metadata, d.metadata) FROM docs d LEFT JOIN documents m ON m.doc_id = d.doc_id "
        "WHERE d.internal_id > ? AND instr(d.doc_id, char(31)) = 0 ORDER BY d.internal_id LIMIT ?"
        if present
        else "SELECT internal_id, doc_id, text, title, metadata FROM docs WHERE internal_id > ? "
        "ORDER BY internal_id LIMIT ?"
    )
    while True:
        with con_reader() as con:
            rows = con.execute(sql, (last, batch)).fetchall()
        if not rows:
            return
        yield from (row[1:] for row in rows)
        last = int(rows[-1][0])


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def shard_upsert_arguments(
    positions: Sequence[int],
    rows_of: Sequence[Sequence[int]],
    docs: Sequence[Document],
    embeddings: np.ndarray,
    tokens: Sequence[np.ndarray] | None,
    terms: Sequence[np.ndarray] | None,
    splits: Sequence[Any] | None,
) -> tuple[list[Document], np.ndarray, dict[str, Any]]:
    """One shard's part of an upsert: its documents (``positions``), their passages' embedding rows, and the
    ``tokens``/``terms``/``splits`` keywords of ``Collection.upsert`` cut to them (the local and the Ray collection)."""
    rows = [r for p in positions for r in rows_of[p]]
    return (
        [docs[p] for p in positions],
        embeddings[rows],
        {
            "tokens": None if tokens is None else [tokens[r] for r in rows],
            "terms": None if terms is None else [terms[r] for r in rows],
            "splits": None if splits is None else [splits[p] for p in positions],
        },
    )
