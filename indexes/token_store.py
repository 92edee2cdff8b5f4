"""Per-passage token vectors for late-interaction (MaxSim) reranking, stored compactly in a SQLite table.

One row per doc id holds that passage's content-token vectors (what ``MaxSimReranker.passage_token_embeddings``
returns): only the tokens MaxSim reads, no padding, no special tokens. Five encodings:

- ``2bit`` / ``1bit`` (residual, ColBERTv2 style, :mod:`.residual`): per token a uint16 centroid id and 2 or 1 bits
  per dimension, ``2 + dim * bits / 8`` bytes (98 / 50 for a 384-d model); the centroids and bucket values live in a
  ``token_codec`` table of the same file, learned from the collection's own tokens;
- ``pq`` (product quantisation, :mod:`.product`): per token one code per 12-dimension sub-vector, 36 bytes for a
  384-d model (0.75 bits per dimension); the sub-centroids live in a ``token_pq`` table, learned the same way;
- ``int8``: per token, ``q = round(x / s)`` with ``s = max|x| / 127`` kept as one float32, so ``|x - q*s| <= s/2``;
  ``dim + 4`` bytes per token (388 for a 384-d model), half of float16;
- ``float16``: ``2 * dim`` bytes per token, bit-exact with the on-the-fly path.

Each row names its own encoding, so a store may hold several while it changes: a learned-codec store (2bit, 1bit,
pq) writes int8 rows until it has a codec, and :meth:`TokenStore.train_pending` learns one from them (then
re-encodes them): a collection calls it after each write, where it acts from :data:`TRAIN_AT` stored tokens. A
smaller store keeps its int8 rows (about 25 MB at most for a 384-d model): they score closer to float16 than a codec
learned from so few tokens, and learning one at the end of every small ``add`` was the largest cost of indexing
with tokens (docs/benchmarks/indexing.md); ``twostage tokens C --convert 2bit`` compresses such a store anyway.
:meth:`TokenStore.convert` re-encodes every row into another encoding, learning a fresh codec from the whole store.
The store's encoding is kept in the file's ``meta`` table, so it changes in the same transaction as the rows.
So is its token pool factor (:mod:`.token_pooling`): above 1, each passage's tokens are merged into ``n / factor``
cluster means as they are written, before any encoding; :meth:`TokenStore.convert` can pool an unpooled store.

Inside a collection the table lives in ``documents.sqlite`` and shares its connection, so the collection writes a
document and its tokens (or removes stale ones) in one transaction: a replaced or deleted document's tokens are
never served, whatever crashes. :meth:`TokenStore.open` makes a standalone store in a file of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .document_store import DocumentStore
from .errors import CollectionError
from .product import ProductCodec
from .residual import MAX_SAMPLE, ResidualCodec
from .token_pooling import check_factor, pool_tokens, pooled_count

ENCODINGS = ("2bit", "1bit", "int8", "float16", "pq")
DEFAULT_ENCODING = "2bit"
#: a new collection's token pool factor per encoding (:func:`default_pool`): 2bit pools by 2.5, which brings an
#: 81-token MS MARCO passage to 3,133 bytes and ranks like unpooled 2bit (benchmarks/bench_maxsim.py); others: none
DEFAULT_POOL = {"2bit": 2.5}
#: residual encodings and their bits per dimension
RESIDUAL = {"2bit": 2, "1bit": 1}
#: encodings whose codec is learned from the store's own tokens
LEARNED = (*RESIDUAL, "pq")
#: a collection's learned-codec store learns its codec inside the write that brings this many int8 tokens
TRAIN_AT = 65_536
#: the fewest stored tokens :meth:`TokenStore.train_pending` learns a codec from when asked directly
MIN_TRAIN = 1_024

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

CODEC_SCHEMA = """
CREATE TABLE IF NOT EXISTS token_codec (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    bits      INTEGER NOT NULL,
    k         INTEGER NOT NULL,
    dim       INTEGER NOT NULL,
    centroids BLOB NOT NULL,
    cutoffs   BLOB NOT NULL,
    weights   BLOB NOT NULL
)
"""

PQ_SCHEMA = """
CREATE TABLE IF NOT EXISTS token_pq (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    nbits     INTEGER NOT NULL,
    m         INTEGER NOT NULL,
    dim       INTEGER NOT NULL,
    codebooks BLOB NOT NULL,
    rotation  BLOB
)
"""

#: ids per ``IN (...)`` query, under SQLite's oldest variable limit (999)
CHUNK = 900
#: rows re-encoded per step of a conversion: each step holds its rows decoded to float32 plus the codec's working
#: copies (about 0.2 MB per 80-token passage), so 2,000 rows made a codec learned mid-index the write's memory peak
CONVERT_BATCH = 256


@dataclass
class TokenStats:
    """How much the store holds: passages, token vectors, payload bytes (vectors + scales or centroid ids) and the
    codec's bytes (centroids and bucket tables, shared by all passages; 0 without one)."""

    passages: int = 0
    tokens: int = 0
    payload_bytes: int = 0
    codec_bytes: int = 0

    @property
    def bytes_per_passage(self) -> float:
        return self.payload_bytes / self.passages if self.passages else 0.0

    @property
    def tokens_per_passage(self) -> float:
        return self.tokens / self.passages if self.passages else 0.0


class TokenStore:
    """Token vectors keyed by doc id, in a ``tokens`` table of a :class:`DocumentStore`'s SQLite file.

    Writes join the document store's open transaction when there is one (that is how a collection keeps them atomic).
    ``encoding`` and ``pool`` (the token pool factor, 1 = none) apply to a new store; an existing one keeps those
    recorded in its file.
    """

    def __init__(
        self, documents: DocumentStore, *, encoding: str = DEFAULT_ENCODING, pool: float = 1.0, owned: bool = False
    ):
        _check_encoding(encoding)
        pool = check_factor(pool)
        self.documents = documents
        self._owned = owned  # close() closes the SQLite file too (a standalone store)
        with documents.transaction() as con:
            con.execute(SCHEMA)
            con.execute(CODEC_SCHEMA)
            columns = {row[1] for row in con.execute("PRAGMA table_info(token_pq)")}
            if not documents.read_only:  # a read-only file from before pq has no pq rows either
                con.execute(PQ_SCHEMA)
                if columns and "rotation" not in columns:  # a file from before rotated codes
                    con.execute("ALTER TABLE token_pq ADD COLUMN rotation BLOB")
                columns = {"rotation"}
            recorded = documents.get_meta("token_encoding")
            if recorded is None:
                documents.set_meta("token_encoding", encoding)
                if pool != 1.0:
                    documents.set_meta("token_pool", pool)
        if recorded is not None and recorded not in ENCODINGS:
            raise CollectionError(
                f"{documents.path}: the token encoding recorded in its meta table is {recorded!r}, not one of "
                f"{', '.join(ENCODINGS)} (edited or damaged); run 'twostage check {documents.path.parent}'"
            )
        self.encoding: str = recorded or encoding
        self.pool: float = float(documents.get_meta("token_pool", 1.0))
        self._pq_table = bool(columns)  # False only for a read-only store from before pq
        self.codec: ResidualCodec | ProductCodec | None = None
        self._version = -1  # of the codec this object holds; another process's conversion bumps the file's
        self._refresh()

    @classmethod
    def open(cls, path: str | Path, *, encoding: str = DEFAULT_ENCODING, pool: float = 1.0) -> TokenStore:
        """A standalone token store in its own SQLite file (created if needed)."""
        return cls(DocumentStore(path), encoding=encoding, pool=pool, owned=True)

    # ------------------------------------------------------------------ writes
    def put_many(self, doc_ids: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Store (or replace) each doc's ``(n_tokens, dim)`` vectors (pooled first when the store pools), in one
        transaction."""
        doc_ids = [str(d) for d in doc_ids]
        if len(doc_ids) != len(arrays):
            raise ValueError(f"{len(doc_ids)} doc ids but {len(arrays)} token arrays")
        with self.documents.transaction() as con:
            self._refresh()
            _write(con, self._encode_many(doc_ids, arrays, self.pool))

    def delete(self, doc_ids: Sequence[str]) -> None:
        """Forget the tokens of these docs (unknown ids are ignored), in one transaction."""
        with self.documents.transaction() as con:
            for chunk in _chunks([str(d) for d in doc_ids]):
                con.execute(f"DELETE FROM tokens WHERE doc_id IN ({','.join('?' * len(chunk))})", chunk)

    def train_pending(self, minimum: int = MIN_TRAIN) -> bool:
        """For a learned-codec store (2bit, 1bit, pq) without a codec: once ``minimum`` tokens are stored, learn the
        codec from them and re-encode them, in a transaction of its own (call it outside any other). True if it did."""
        self._refresh()
        if self.encoding not in LEARNED or self.codec is not None or self.stats().tokens < minimum:
            return False
        with self.documents.reading() as con:
            dim = con.execute("SELECT dim FROM tokens LIMIT 1").fetchone()[0]
        if dim % 8 and self.encoding in RESIDUAL:  # residual codes pack 8 / bits dimensions to a byte: such a
            return False  # (test-sized) model stays int8
        self.convert(self.encoding)
        return True

    def convert(self, encoding: str, *, seed: int = 0, pool: float | None = None) -> None:
        """Re-encode every stored row into ``encoding`` (a learned one, 2bit, 1bit or pq, learns a fresh codec from a
        sample of the store), and make it the store's encoding, all in one transaction of its own (call it outside
        any other, so a rollback cannot leave this object with a codec the file lacks): a crash leaves the store as
        it was. ``pool`` (a factor above 1) also pools every passage's tokens; only an unpooled store can be pooled,
        since pooling again would need the passages' own tokens."""
        _check_encoding(encoding)
        with self.documents.transaction() as con:
            self._refresh()
            new_pool = self.pool if pool is None else check_factor(pool)
            if new_pool != self.pool and self.pool != 1.0:
                raise ValueError(
                    f"its tokens are already pooled by {self.pool:g}; pooling them differently "
                    "needs the passages' own tokens (re-index with --token-pool)"
                )
            extra_pool = new_pool if new_pool != self.pool else 1.0  # what this conversion pools by
            codec = self._train(encoding, seed, extra_pool) if encoding in LEARNED else None
            con.execute("DELETE FROM token_codec")
            con.execute("DELETE FROM token_pq")
            if isinstance(codec, ResidualCodec):
                con.execute(
                    "INSERT INTO token_codec(id, bits, k, dim, centroids, cutoffs, weights) "
                    "VALUES (1, :bits, :k, :dim, :centroids, :cutoffs, :weights)",
                    codec.to_blobs(),
                )
            elif codec is not None:
                con.execute(
                    "INSERT INTO token_pq(id, nbits, m, dim, codebooks, rotation) "
                    "VALUES (1, :nbits, :m, :dim, :codebooks, :rotation)",
                    codec.to_blobs(),
                )
            old_encoding, old_codec, old_version, old_pool = self.encoding, self.codec, self._version, self.pool
            self.documents.set_meta("token_encoding", encoding)
            self.documents.set_meta("token_codec_version", old_version + 1)
            self.documents.set_meta("token_pool", new_pool)
            try:
                self.encoding, self.codec, self._version, self.pool = encoding, codec, old_version + 1, new_pool
                last = ""
                while True:
                    batch = con.execute(
                        "SELECT doc_id, encoding, n_tokens, dim, scales, vectors FROM tokens WHERE doc_id > ? "
                        "ORDER BY doc_id LIMIT ?",
                        (last, CONVERT_BATCH),
                    ).fetchall()
                    if not batch:
                        break
                    last = batch[-1][0]
                    arrays = _decode_rows([row[1:] for row in batch], old_codec)
                    _write(con, self._encode_many([row[0] for row in batch], arrays, extra_pool))
            except BaseException:  # the transaction rolls back: the store is as it was
                self.encoding, self.codec, self._version, self.pool = old_encoding, old_codec, old_version, old_pool
                raise

    def _train(self, encoding: str, seed: int, pool: float = 1.0) -> ResidualCodec | ProductCodec:
        """``encoding``'s codec, learned from up to :data:`MAX_SAMPLE` stored tokens (whole passages, at random; pooled
        by ``pool`` first when a conversion pools them)."""
        with self.documents.reading() as con:
            sizes = con.execute("SELECT doc_id, n_tokens FROM tokens").fetchall()
        total = sum(pooled_count(n, pool) for _, n in sizes)
        if total == 0:
            raise ValueError("no stored tokens to learn a codec from")
        order = np.random.default_rng(seed).permutation(len(sizes))
        chosen, count = [], 0
        for i in order:
            if count >= MAX_SAMPLE:
                break
            chosen.append(sizes[i][0])
            count += pooled_count(sizes[i][1], pool)
        sample = np.concatenate([pool_tokens(a, pool) for a in self.get_many(chosen) if a is not None])
        sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), 1e-12)
        if encoding == "pq":
            return ProductCodec.train(sample[:MAX_SAMPLE], seed=seed)
        return ResidualCodec.train(sample[:MAX_SAMPLE], RESIDUAL[encoding], n_tokens=total, seed=seed)

    def _encode_many(self, doc_ids: Sequence[str], arrays: Sequence[np.ndarray], pool: float) -> list[tuple]:
        """Rows for ``arrays`` (each checked and pooled as :meth:`_encode` does); with a learned codec, all passages
        are encoded in one call (one nearest-centroid search for the whole batch: a search per passage spends more
        on the search library's thread start-up than on the search)."""
        arrays = [self._checked(doc_id, array, pool) for doc_id, array in zip(doc_ids, arrays)]
        codec = self.codec
        if self.encoding == "float16" or codec is None or not arrays or any(a.shape[1] != codec.dim for a in arrays):
            return [(doc_id, *self._encode(doc_id, array, 1.0)) for doc_id, array in zip(doc_ids, arrays)]
        cuts = np.cumsum([len(a) for a in arrays])[:-1]
        if isinstance(codec, ProductCodec):
            codes = np.split(codec.encode(np.concatenate(arrays)), cuts)
            return [(d, "pq", len(a), a.shape[1], None, c.tobytes()) for d, a, c in zip(doc_ids, arrays, codes)]
        ids, packed = codec.encode(np.concatenate(arrays))
        name = f"{codec.bits}bit"
        return [
            (d, name, len(a), a.shape[1], i.astype("<u2").tobytes(), p.tobytes())
            for d, a, i, p in zip(doc_ids, arrays, np.split(ids, cuts), np.split(packed, cuts))
        ]

    @staticmethod
    def _checked(doc_id: str, array: np.ndarray, pool: float) -> np.ndarray:
        """``array`` as a ``(n >= 1, dim)`` finite array, pooled by ``pool`` when it is above 1; ValueError naming
        the doc otherwise."""
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"tokens of {doc_id!r} must have shape (n_tokens >= 1, dim), got {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"tokens of {doc_id!r} contain NaN or infinite values")
        return pool_tokens(array, pool) if pool != 1.0 else array

    def _encode(self, doc_id: str, array: np.ndarray, pool: float) -> tuple[str, int, int, bytes | None, bytes]:
        """One row: ``array`` checked, pooled by ``pool`` when it is above 1, in the store's encoding."""
        array = self._checked(doc_id, array, pool)
        n, dim = array.shape
        if self.encoding == "float16":
            return "float16", n, dim, None, np.ascontiguousarray(array, dtype=np.float16).tobytes()
        if isinstance(self.codec, ProductCodec) and dim == self.codec.dim:
            return "pq", n, dim, None, self.codec.encode(array).tobytes()
        if isinstance(self.codec, ResidualCodec) and dim == self.codec.dim:
            ids, packed = self.codec.encode(array)
            return f"{self.codec.bits}bit", n, dim, ids.astype("<u2").tobytes(), packed.tobytes()
        codes, scales = quantize_int8(array)  # int8, or a learned-codec store's row written before it has a codec
        return "int8", n, dim, scales.tobytes(), codes.tobytes()

    def _refresh(self) -> None:
        """Reload the encoding and codec when the file's codec version moved (a conversion by another process)."""
        version = int(self.documents.get_meta("token_codec_version", 0))
        if version == self._version:
            return
        with self.documents.reading() as con:
            row = con.execute(
                "SELECT bits, k, dim, centroids, cutoffs, weights FROM token_codec WHERE id = 1"
            ).fetchone()
            pq = (
                con.execute("SELECT nbits, m, dim, codebooks, rotation FROM token_pq WHERE id = 1").fetchone()
                if self._pq_table
                else None
            )
        self.codec = (
            ResidualCodec.from_blobs(*row)
            if row is not None
            else ProductCodec.from_blobs(*pq)
            if pq is not None
            else None
        )
        self.encoding = self.documents.get_meta("token_encoding", self.encoding)
        self.pool = float(self.documents.get_meta("token_pool", 1.0))
        self._version = version

    # ------------------------------------------------------------------ reads
    def get(self, doc_id: str) -> np.ndarray | None:
        """The doc's token vectors ``(n_tokens, dim)`` (float16 as stored, float32 from int8, residual or pq codes),
        or None if none stored."""
        return self.get_many([doc_id])[0]

    def get_many(self, doc_ids: Sequence[str]) -> list[np.ndarray | None]:
        """Token vectors per doc id, in the order asked (None where none are stored); one query per 900 ids and one
        decode for all residual (or pq) rows."""
        ids = [str(d) for d in doc_ids]
        keys: list[str] = []
        rows: list[tuple] = []
        with self.documents.reading() as con:
            self._refresh()
            for chunk in _chunks(list(dict.fromkeys(ids))):
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT doc_id, encoding, n_tokens, dim, scales, vectors FROM tokens WHERE doc_id IN ({marks})"
                for doc_id, *row in con.execute(sql, chunk):
                    keys.append(doc_id)
                    rows.append(tuple(row))
        found = dict(zip(keys, _decode_rows(rows, self.codec)))
        return [found.get(d) for d in ids]

    def __len__(self) -> int:
        return self.stats().passages

    def stats(self) -> TokenStats:
        """Passages, tokens and payload bytes stored (one aggregate query), and the codec's size."""
        with self.documents.reading() as con:
            passages, tokens, size = con.execute(
                "SELECT COUNT(*), IFNULL(SUM(n_tokens), 0), IFNULL(SUM(LENGTH(vectors) + IFNULL(LENGTH(scales), 0)), 0) "
                "FROM tokens"
            ).fetchone()
            codec = con.execute(
                "SELECT IFNULL(SUM(LENGTH(centroids) + LENGTH(cutoffs) + LENGTH(weights)), 0) FROM token_codec"
            ).fetchone()[0]
            if self._pq_table:
                codec += con.execute(
                    "SELECT IFNULL(SUM(LENGTH(codebooks) + IFNULL(LENGTH(rotation), 0)), 0) FROM token_pq"
                ).fetchone()[0]
        return TokenStats(int(passages), int(tokens), int(size), int(codec))

    def bytes_per_passage(self) -> float:
        """Mean stored bytes per passage (vectors + scales or centroid ids; the codec and SQLite's overhead excluded)."""
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


def default_pool(encoding: str) -> float:
    """The token pool factor a new collection storing ``encoding`` gets unless told otherwise (1 = no pooling)."""
    return DEFAULT_POOL.get(encoding, 1.0)


def quantize_int8(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: ``(codes, scales)`` with ``array ≈ codes * scales[:, None]``, error <= scale/2."""
    x = np.asarray(array, dtype=np.float32)
    scales = np.abs(x).max(axis=1) / 127.0
    scales[scales == 0] = 1.0  # an all-zero row stays zero
    codes = np.clip(np.rint(x / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales.astype(np.float32)


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"token encoding must be one of {', '.join(ENCODINGS)} (got {encoding!r})")


def _write(con: sqlite3.Connection, rows: list[tuple]) -> None:
    con.executemany(
        "INSERT OR REPLACE INTO tokens(doc_id, encoding, n_tokens, dim, scales, vectors) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def _decode_rows(rows: Sequence[tuple], codec: ResidualCodec | ProductCodec | None) -> list[np.ndarray]:
    """Stored ``(encoding, n, dim, scales, vectors)`` rows back to arrays; all residual (or pq) rows in one decode."""
    out: list[np.ndarray | None] = [None] * len(rows)
    coded = [i for i, row in enumerate(rows) if row[0] in LEARNED]
    for i, row in enumerate(rows):
        if row[0] not in LEARNED:
            out[i] = _decode(*row)
    if coded and isinstance(codec, ProductCodec) and all(rows[i][0] == "pq" for i in coded):
        decoded = codec.decode(np.frombuffer(b"".join(rows[i][4] for i in coded), dtype=np.uint8))
    elif coded:
        if not isinstance(codec, ResidualCodec) or any(f"{codec.bits}bit" != rows[i][0] for i in coded):
            raise CollectionError(
                "compressed token rows without their codec: the token store is damaged ('twostage check' says more)"
            )
        ids = np.frombuffer(b"".join(rows[i][3] for i in coded), dtype="<u2")
        packed = np.frombuffer(b"".join(rows[i][4] for i in coded), dtype=np.uint8).reshape(len(ids), -1)
        decoded = codec.decode(ids, packed)
    if coded:
        start = 0
        for i in coded:
            n = rows[i][1]
            out[i] = decoded[start : start + n]
            start += n
    return out  # type: ignore[return-value]


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
