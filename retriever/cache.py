"""On-disk embedding cache: one SQLite file mapping (model fingerprint, text hash) to a float32 vector.

Re-indexing unchanged text then costs a lookup instead of a forward pass. Any cache failure (corrupt file,
read-only disk) switches the cache off with a single warning; indexing itself never fails because of it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twostage.runtime.config import cache_root

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    fingerprint TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (fingerprint, text_hash)
) WITHOUT ROWID
"""
_CHUNK = 500  # ids per IN (...) query, well under SQLite's bound-parameter limit


def default_cache_path() -> Path:
    """``<cache root>/embeddings.sqlite`` (``$TWOSTAGE_CACHE_DIR``, else ``~/.cache/twostage``)."""
    return cache_root() / "embeddings.sqlite"


class EmbeddingCache:
    """Embedding store shared safely by threads and processes (WAL journal, busy timeout); opened lazily."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout: float = 30.0):
        self.path = Path(path) if path is not None else default_cache_path()
        self.timeout = timeout
        self.enabled = True
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, enabled={self.enabled})"

    def _connection(self) -> sqlite3.Connection:
        """The open connection, (re)opened after a fork since SQLite connections must not cross processes."""
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
                conn.execute("SELECT 1 FROM embeddings LIMIT 1").fetchall()
            except Exception:
                conn.close()
                raise
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _disable(self, exc: Exception) -> None:
        """Turn the cache off for this process, warning once."""
        if self.enabled:
            warnings.warn(
                f"embedding cache {self.path} is unusable ({type(exc).__name__}: {exc}); continuing without it",
                RuntimeWarning,
                stacklevel=3,
            )
        self.enabled = False
        if self._conn is not None and self._pid == os.getpid():
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None

    def get_many(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for the given text hashes under one model fingerprint; misses are simply absent."""
        if not self.enabled or not hashes:
            return {}
        unique = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            try:
                conn = self._connection()
                for start in range(0, len(unique), _CHUNK):
                    chunk = unique[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows = conn.execute(
                        f"SELECT text_hash, vector FROM embeddings WHERE fingerprint = ? AND text_hash IN ({marks})",
                        [fingerprint, *chunk],
                    )
                    for text_hash, blob in rows:
                        found[text_hash] = np.frombuffer(blob, dtype=np.float32).copy()
            except (sqlite3.Error, OSError) as exc:
                self._disable(exc)
                return {}
        return found

    def put_many(self, fingerprint: str, hashes: Sequence[str], vectors: np.ndarray | Sequence[np.ndarray]) -> None:
        """Store vectors (float32) for the given hashes in a single transaction; replaces existing rows."""
        if not self.enabled or len(hashes) == 0:
            return
        if len(hashes) != len(vectors):
            raise ValueError(f"put_many: {len(hashes)} hashes but {len(vectors)} vectors")
        rows = [
            (fingerprint, text_hash, np.ascontiguousarray(vector, dtype=np.float32).tobytes())
            for text_hash, vector in zip(hashes, vectors)
        ]
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR REPLACE INTO embeddings (fingerprint, text_hash, vector) VALUES (?, ?, ?)", rows
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                self._disable(exc)

    def count(self, fingerprint: str | None = None) -> int:
        """Number of stored vectors, for one fingerprint or overall (0 when the cache is off)."""
        if not self.enabled:
            return 0
        with self._lock:
            try:
                conn = self._connection()
                if fingerprint is None:
                    return conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
                return conn.execute("SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?", (fingerprint,)).fetchone()[
                    0
                ]
            except (sqlite3.Error, OSError) as exc:
                self._disable(exc)
                return 0

    def close(self) -> None:
        """Close the connection; the cache reopens on next use."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
