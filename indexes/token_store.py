"""Per-passage token vectors for late-interaction (MaxSim) reranking, stored compactly in a SQLite table.

One row per doc id holds that passage's content-token vectors (what ``MaxSimReranker.passage_token_embeddings``
returns): only the tokens MaxSim reads, no padding, no special tokens. Two encodings:

- ``int8``: per token, ``q = round(x / s)`` with ``s = max|x| / 127`` kept as one float32, so ``|x - q*s| <= s/2``;
  ``dim + 4`` bytes per token (388 for a 384-d model), half of float16; MaxSim nDCG@10 on msmarco-dl20 stays within
  0.0003 of float16 (``benchmarks/bench_maxsim.py``);
- ``float16``: ``2 * dim`` bytes per token, bit-exact with the on-the-fly path.

Inside a collection the table lives in ``documents.sqlite`` and shares its connection, so the collection writes a
document and its tokens (or removes stale ones) in one transaction: a replaced or deleted document's tokens are
never served, whatever crashes. :meth:`TokenStore.open` makes a standalone store in a file of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .document_store import DocumentStore

ENCODINGS = ("int8", "float16")
DEFAULT_ENCODING = "int8"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    doc_id   TEXT PRIMARY KEY,
    encoding TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    dim      INTEGER NOT NULL,
    scales   BLOB,
    vectors  BLOB NOT NULL
)
"""

#: ids per ``IN (...)`` query, under SQLite's oldest variable limit (999)
CHUNK = 900


@dataclass
class TokenStats:
    """How much the store holds: passages, token vectors and payload bytes (vectors + scales)."""

    passages: int = 0
    tokens: int = 0
    payload_bytes: int = 0

    @property
    def bytes_per_passage(self) -> float:
        return self.payload_bytes / self.passages if self.passages else 0.0

    @property
    def tokens_per_passage(self) -> float:
        return self.tokens / self.passages if self.passages else 0.0


class TokenStore:
    """Token vectors keyed by doc id, in a ``tokens`` table of a :class:`DocumentStore`'s SQLite file.

    Writes join the document store's open transaction when there is one (that is how a collection keeps them atomic).
    """

    def __init__(self, documents: DocumentStore, *, encoding: str = DEFAULT_ENCODING, owned: bool = False):
        if encoding not in ENCODINGS:
            raise ValueError(f"token encoding must be one of {', '.join(ENCODINGS)} (got {encoding!r})")
        self.documents = documents
        self.encoding = encoding
        self._owned = owned  # close() closes the SQLite file too (a standalone store)
        with documents.transaction() as con:
            con.execute(SCHEMA)

    @classmethod
    def open(cls, path: str | Path, *, encoding: str = DEFAULT_ENCODING) -> "TokenStore":
        """A standalone token store in its own SQLite file (created if needed)."""
        return cls(DocumentStore(path), encoding=encoding, owned=True)

    # ------------------------------------------------------------------ writes
    def put_many(self, doc_ids: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Store (or replace) each doc's ``(n_tokens, dim)`` vectors, in one transaction."""
        doc_ids = [str(d) for d in doc_ids]
        if len(doc_ids) != len(arrays):
            raise ValueError(f"{len(doc_ids)} doc ids but {len(arrays)} token arrays")
        rows = [(doc_id, *self._encode(doc_id, array)) for doc_id, array in zip(doc_ids, arrays)]
        with self.documents.transaction() as con:
            con.executemany(
                "INSERT OR REPLACE INTO tokens(doc_id, encoding, n_tokens, dim, scales, vectors) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def delete(self, doc_ids: Sequence[str]) -> None:
        """Forget the tokens of these docs (unknown ids are ignored), in one transaction."""
        with self.documents.transaction() as con:
            for chunk in _chunks([str(d) for d in doc_ids]):
                con.execute(f"DELETE FROM tokens WHERE doc_id IN ({','.join('?' * len(chunk))})", chunk)

    def _encode(self, doc_id: str, array: np.ndarray) -> tuple[str, int, int, bytes | None, bytes]:
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"tokens of {doc_id!r} must have shape (n_tokens >= 1, dim), got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"tokens of {doc_id!r} contain NaN or infinite values")
        n, dim = array.shape
        if self.encoding == "float16":
            return "float16", n, dim, None, np.ascontiguousarray(array, dtype=np.float16).tobytes()
        codes, scales = quantize_int8(array)
        return "int8", n, dim, scales.tobytes(), codes.tobytes()

    # ------------------------------------------------------------------ reads
    def get(self, doc_id: str) -> np.ndarray | None:
        """The doc's token vectors ``(n_tokens, dim)`` (float16 as stored, float32 from int8), or None if none stored."""
        with self.documents.reading() as con:
            row = con.execute(
                "SELECT encoding, n_tokens, dim, scales, vectors FROM tokens WHERE doc_id = ?", (str(doc_id),)
            ).fetchone()
        return None if row is None else _decode(*row)

    def get_many(self, doc_ids: Sequence[str]) -> list[np.ndarray | None]:
        """Token vectors per doc id, in the order asked (None where none are stored); one query per 900 ids."""
        ids = [str(d) for d in doc_ids]
        found: dict[str, np.ndarray] = {}
        with self.documents.reading() as con:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT doc_id, encoding, n_tokens, dim, scales, vectors FROM tokens WHERE doc_id IN ({marks})"
                for doc_id, *row in con.execute(sql, chunk):
                    found[doc_id] = _decode(*row)
        return [found.get(d) for d in ids]

    def __len__(self) -> int:
        return self.stats().passages

    def stats(self) -> TokenStats:
        """Passages, tokens and payload bytes stored (one aggregate query)."""
        with self.documents.reading() as con:
            passages, tokens, size = con.execute(
                "SELECT COUNT(*), IFNULL(SUM(n_tokens), 0), IFNULL(SUM(LENGTH(vectors) + IFNULL(LENGTH(scales), 0)), 0) "
                "FROM tokens"
            ).fetchone()
        return TokenStats(int(passages), int(tokens), int(size))

    def bytes_per_passage(self) -> float:
        """Mean stored bytes per passage (vectors + scales; SQLite's own overhead excluded)."""
        return self.stats().bytes_per_passage

    def doc_ids(self) -> Iterator[str]:
        """Every doc id with stored tokens (for consistency checks)."""
        with self.documents.reading() as con:
            rows = con.execute("SELECT doc_id FROM tokens ORDER BY doc_id").fetchall()
        return (r[0] for r in rows)

    def close(self) -> None:
        """Close the SQLite file when this store opened it (a collection closes its own)."""
        if self._owned:
            self.documents.close()


def quantize_int8(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: ``(codes, scales)`` with ``array ≈ codes * scales[:, None]``, error <= scale/2."""
    x = np.asarray(array, dtype=np.float32)
    scales = np.abs(x).max(axis=1) / 127.0
    scales[scales == 0] = 1.0  # an all-zero row stays zero
    codes = np.clip(np.rint(x / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales.astype(np.float32)


def _decode(encoding: str, n: int, dim: int, scales: bytes | None, vectors: bytes) -> np.ndarray:
    """A stored row back to ``(n, dim)``: float16 as stored, or int8 dequantized to float32 (a float16 result would
    cost numpy's slow float16 conversion, about 4x the rest of a 100-passage lookup, and gain nothing)."""
    if encoding == "float16":
        return np.frombuffer(vectors, dtype=np.float16).reshape(n, dim).copy()
    codes = np.frombuffer(vectors, dtype=np.int8).reshape(n, dim).astype(np.float32)
    codes *= np.frombuffer(scales, dtype=np.float32)[:, None]  # type: ignore[arg-type]
    return codes


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]
