"""Document frequency of each token id in a collection, for IDF weighting of MaxSim's query tokens.

Two tables in ``documents.sqlite``: ``token_df`` (token id -> number of documents containing it) and ``doc_terms``
(each document's distinct token ids, so a replaced or deleted document's counts can be taken back). The collection
writes them in the same transaction as the document itself, so they are in step with add, replace and delete
whatever crashes. A document written without its token ids (or a collection built before this table existed) leaves
``len(self)`` short of the collection's size, and :meth:`TokenDF.rebuild` recounts from the stored texts.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .document_store import DocumentStore

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS token_df (token_id INTEGER PRIMARY KEY, df INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS doc_terms (doc_id TEXT PRIMARY KEY, ids BLOB NOT NULL)",
)
CHUNK = 900  # ids per IN (...), under SQLite's oldest variable limit


class TokenDF:
    """Per-token document frequencies kept beside a :class:`DocumentStore` (joins its open transaction)."""

    def __init__(self, documents: DocumentStore):
        self.documents = documents
        with documents.transaction() as con:
            for statement in SCHEMA:
                con.execute(statement)

    # ------------------------------------------------------------------ writes
    def put_many(self, doc_ids: Sequence[str], term_ids: Sequence[Iterable[int]]) -> None:
        """Count each document's distinct token ids, first taking back what a previous version of it counted."""
        doc_ids = [str(d) for d in doc_ids]
        if len(doc_ids) != len(term_ids):
            raise ValueError(f"{len(doc_ids)} doc ids but {len(term_ids)} token id lists")
        sets = [
            np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64))
            for ids in term_ids
        ]
        with self.documents.transaction() as con:
            self._take_back(con, doc_ids)
            counts = Counter(int(t) for ids in sets for t in ids)
            con.executemany(
                "INSERT INTO token_df(token_id, df) VALUES (?, ?) ON CONFLICT(token_id) DO UPDATE SET df = df + excluded.df",
                counts.items(),
            )
            con.executemany(
                "INSERT INTO doc_terms(doc_id, ids) VALUES (?, ?)",
                [(d, ids.tobytes()) for d, ids in zip(doc_ids, sets)],
            )

    def delete(self, doc_ids: Sequence[str]) -> None:
        """Take back the counts of these documents (unknown ids are ignored)."""
        with self.documents.transaction() as con:
            self._take_back(con, [str(d) for d in doc_ids])

    def rebuild(
        self, texts: Iterable[tuple[str, str]], term_ids: Callable[[list[str]], list[np.ndarray]], batch: int = 1024
    ) -> None:
        """Recount from scratch over ``(doc_id, text)`` pairs, tokenised by ``term_ids``, in one transaction."""
        with self.documents.transaction() as con:
            con.execute("DELETE FROM token_df")
            con.execute("DELETE FROM doc_terms")
            chunk: list[tuple[str, str]] = []
            for pair in texts:
                chunk.append(pair)
                if len(chunk) == batch:
                    self.put_many([d for d, _ in chunk], term_ids([t for _, t in chunk]))
                    chunk = []
            if chunk:
                self.put_many([d for d, _ in chunk], term_ids([t for _, t in chunk]))

    def _take_back(self, con: sqlite3.Connection, doc_ids: list[str]) -> None:
        old: Counter[int] = Counter()
        for chunk in _chunks(doc_ids):
            marks = ",".join("?" * len(chunk))
            for (blob,) in con.execute(f"SELECT ids FROM doc_terms WHERE doc_id IN ({marks})", chunk):
                old.update(int(t) for t in np.frombuffer(blob, dtype=np.int64))
            con.execute(f"DELETE FROM doc_terms WHERE doc_id IN ({marks})", chunk)
        if old:
            con.executemany("UPDATE token_df SET df = df - ? WHERE token_id = ?", [(n, t) for t, n in old.items()])
            con.execute("DELETE FROM token_df WHERE df <= 0")

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        """Documents counted."""
        with self.documents.reading() as con:
            return int(con.execute("SELECT COUNT(*) FROM doc_terms").fetchone()[0])

    def df(self, token_ids: Sequence[int]) -> np.ndarray:
        """Document frequency per token id (0 for an id no document holds), in the order asked."""
        ids = [int(t) for t in token_ids]
        found: dict[int, int] = {}
        with self.documents.reading() as con:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                found.update(con.execute(f"SELECT token_id, df FROM token_df WHERE token_id IN ({marks})", chunk))
        return np.array([found.get(t, 0) for t in ids], dtype=np.float64)

    def idf(self, token_ids: Sequence[int]) -> np.ndarray:
        """BM25's IDF, log(1 + (N - df + 0.5) / (df + 0.5)): always positive, largest for the rarest tokens."""
        n = len(self)
        df = self.df(token_ids)
        return np.log1p((n - df + 0.5) / (df + 0.5))


def _chunks(values: list) -> Iterable[list]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]
