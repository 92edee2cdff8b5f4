"""The lexical index: SQLite FTS5 BM25 inside ``documents.sqlite``, written in the same transaction as the documents.

A contentless FTS5 table (``tokenize='porter unicode61'``) keyed by the documents' internal ids, so it costs no second
copy of the text and a crash can never leave it out of step with the ``docs`` table. Replacing or deleting a document
first takes back its old terms (FTS5's ``'delete'`` command, given the stored text). FTS5's ``bm25()`` has k1 = 1.2
and b = 0.75 fixed; queries are OR-ed terms with English stop words left out. The ``meta`` key ``lexical`` records
that the index is complete: a collection made before it existed is indexed from its stored texts on first need.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .document_store import DocumentStore, _match_clause

TABLE = "lexical"
TOKENIZER = "porter unicode61"
#: what ``meta['lexical']`` holds once the index covers every document
RECORD = {"engine": "sqlite-fts5", "tokenizer": TOKENIZER, "version": 1}
#: left out of queries (bm25s's English list, so both lexical engines drop the same words)
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)
_TERM = re.compile(r"[^\W_]+")
_BATCH = 1000


def query_terms(query: str) -> list[str]:
    """The distinct lower-cased words of ``query`` that are not stop words, in order (unicode61's word characters)."""
    return list(dict.fromkeys(t for t in _TERM.findall(query.lower()) if t not in STOPWORDS))


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH expression OR-ing the query's terms (each quoted, so no word is read as an operator); None if none."""
    terms = query_terms(query)
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms) or None


class LexicalIndex:
    """BM25 over a :class:`DocumentStore`'s documents; every write joins the store's open transaction."""

    def __init__(self, documents: DocumentStore):
        self.documents = documents

    @property
    def ready(self) -> bool:
        """True when the index covers every stored document (it was created with the collection or built since)."""
        return self.documents.get_meta("lexical") is not None

    def create(self) -> None:
        """Make the (empty) table for a new, empty collection and mark it complete, in one transaction."""
        with self.documents.transaction() as con:
            _create_table(con)
            self.documents.set_meta("lexical", RECORD)

    def build(self) -> int:
        """Index every stored document from scratch in one transaction (a collection made before this index existed);
        returns the number indexed."""
        count = 0
        with self.documents.transaction() as con:
            con.execute(f"DROP TABLE IF EXISTS {TABLE}")
            _create_table(con)
            last = -1
            while True:
                rows = con.execute(
                    "SELECT internal_id, title, text FROM docs WHERE internal_id > ? ORDER BY internal_id LIMIT ?",
                    (last, _BATCH),
                ).fetchall()
                if not rows:
                    break
                con.executemany(
                    f"INSERT INTO {TABLE}(rowid, body) VALUES (?, ?)", [(i, _body(t, x)) for i, t, x in rows]
                )
                count += len(rows)
                last = int(rows[-1][0])
            self.documents.set_meta("lexical", RECORD)
        return count

    # ------------------------------------------------------------------ writes (inside the collection's transaction)
    def remove(self, doc_ids: Sequence[str]) -> None:
        """Take back the terms of these documents' stored versions; call before the ``docs`` rows go."""
        if not self.ready:
            return
        with self.documents.transaction() as con:
            for start in range(0, len(doc_ids), 900):
                chunk = [str(d) for d in doc_ids[start : start + 900]]
                marks = ",".join("?" * len(chunk))
                rows = con.execute(
                    f"SELECT internal_id, title, text FROM docs WHERE doc_id IN ({marks})", chunk
                ).fetchall()
                con.executemany(
                    f"INSERT INTO {TABLE}({TABLE}, rowid, body) VALUES ('delete', ?, ?)",
                    [(i, _body(t, x)) for i, t, x in rows],
                )

    def add(self, internal_ids: Iterable[int], bodies: Iterable[str]) -> None:
        """Index new documents under their internal ids (``Document.text_for_encoding()`` as the body)."""
        if not self.ready:
            return
        with self.documents.transaction() as con:
            con.executemany(
                f"INSERT INTO {TABLE}(rowid, body) VALUES (?, ?)",
                [(int(i), body) for i, body in zip(internal_ids, bodies)],
            )

    # ------------------------------------------------------------------ reads
    def search(
        self, queries: Sequence[str], k: int, filter: Mapping[str, Any] | None = None
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` ``(internal id, BM25 score)`` per query, best first (scores positive: FTS5's negated); documents
        sharing no term with the query are left out; ``filter`` keeps documents whose metadata matches."""
        where, params = "", []
        for key, value in (filter or {}).items():
            clause, values = _match_clause(str(key), value)
            where += f" AND ({clause})"
            params.extend(values)
        sql = (
            f"SELECT rowid, -bm25({TABLE}) FROM {TABLE} WHERE {TABLE} MATCH ?"
            + (f" AND rowid IN (SELECT internal_id FROM docs WHERE 1{where})" if where else "")
            + " ORDER BY rank LIMIT ?"
        )
        out = []
        with self.documents.reading() as con:
            for query in queries:
                expression = match_expression(query)
                rows = [] if expression is None else con.execute(sql, [expression, *params, int(k)]).fetchall()
                out.append([(int(i), float(s)) for i, s in rows])
        return out


def _create_table(con: sqlite3.Connection) -> None:
    con.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(body, content='', tokenize='{TOKENIZER}')")


def _body(title: str | None, text: str) -> str:
    """The indexed text of a stored row: what ``Document.text_for_encoding`` gives the encoders."""
    return f"{title}. {text}" if title else text
