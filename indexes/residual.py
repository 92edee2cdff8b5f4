"""Residual compression of token vectors, ColBERTv2 / PLAID style: a centroid id plus 1 or 2 bits per dimension.

A :class:`ResidualCodec` is learned from a sample of unit-length token vectors: k-means centroids (``faiss.Kmeans``,
normalised as ColBERTv2 normalises them), then, per dimension, bucket cutoffs at the quantiles of the residual
``x - centroid`` and one reconstruction value per bucket (the residual's median within that bucket), as ColBERTv2
does, then refined by a few Lloyd-Max steps (bucket means, midpoint cutoffs). ColBERTv2 learns one set of cutoffs for
all dimensions; per-dimension ones cost ``dim * 2**bits`` floats and fit each dimension's spread.

A token is stored as its nearest centroid's id (uint16) and its residual's bucket per dimension, packed ``8 / bits``
to a byte: ``2 + dim * bits / 8`` bytes (98 for a 384-d model at 2 bits, 50 at 1 bit). Decoding is a table lookup per
packed byte plus the centroid, so it costs a gather over the candidates' tokens and no arithmetic per bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

BITS = (1, 2)
#: at most this many centroids (ColBERTv2's 2**floor(log2(16 sqrt(n))) grows past what k-means trains in minutes on a CPU)
MAX_CENTROIDS = 4096
#: k-means wants at least this many training points per centroid (faiss warns below 39)
POINTS_PER_CENTROID = 40
#: Lloyd-Max steps refining the quantile buckets (each sets bucket values to their means and cutoffs to midpoints;
#: mean cosine to the original on msmarco tokens, 2 bits: 0.938 from quantiles alone, 0.948 after one step)
LLOYD_STEPS = 4
#: training sample cap (tokens): k-means on it takes about a minute on two busy cores
MAX_SAMPLE = 65_536
#: k-means iterations: ColBERTv2's own default (``kmeans_niters=4``); 20 took four times as long for the same
#: msmarco-dl20 MaxSim nDCG@10 over three seeds (benchmarks/results/codec.json)
KMEANS_ITERATIONS = 4
#: residuals the per-dimension bucket statistics (quantiles, Lloyd-Max means) are taken from: a quantile's standard
#: error from 16k points is far below a bucket's width
STATS_SAMPLE = 16_384


def default_centroids(n_tokens: int, n_sample: int) -> int:
    """ColBERTv2's centroid count for a collection of ``n_tokens`` vectors, 2**floor(log2(16 sqrt(n))), capped by
    the training sample (about 40 points per centroid) and by :data:`MAX_CENTROIDS`; at least 1."""
    colbert = 2 ** int(math.floor(math.log2(16 * math.sqrt(max(n_tokens, 1)))))
    by_sample = 2 ** int(math.floor(math.log2(max(n_sample // POINTS_PER_CENTROID, 1))))
    return max(1, min(colbert, by_sample, MAX_CENTROIDS))


@dataclass
class ResidualCodec:
    """Centroids ``(k, dim)``, per-dimension bucket ``cutoffs`` ``(dim, 2**bits - 1)`` and ``weights``
    ``(dim, 2**bits)`` (all float32), and the bits per dimension."""

    bits: int
    centroids: np.ndarray
    cutoffs: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"residual bits must be 1 or 2 (got {self.bits})")
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        self.cutoffs = np.ascontiguousarray(self.cutoffs, dtype=np.float32)
        self.weights = np.ascontiguousarray(self.weights, dtype=np.float32)
        k, dim = self.centroids.shape
        if k > 65536:
            raise ValueError(f"at most 65,536 centroids fit a uint16 id (got {k})")
        if dim % 8:
            raise ValueError(f"residual codes need a dimension divisible by 8 (got {dim})")
        levels = 2**self.bits
        if self.cutoffs.shape != (dim, levels - 1) or self.weights.shape != (dim, levels):
            raise ValueError(
                f"cutoffs/weights of shape {self.cutoffs.shape}/{self.weights.shape} do not fit "
                f"{dim} dimensions at {self.bits} bits"
            )
        self._index: Any = None  # faiss inner-product index over the centroids, built on first encode
        self._set_table()

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def bytes_per_token(self) -> int:
        """Stored bytes per token: the uint16 centroid id and the packed residual."""
        return 2 + self.dim * self.bits // 8

    @classmethod
    def train(
        cls,
        sample: np.ndarray,
        bits: int,
        *,
        n_centroids: int | None = None,
        n_tokens: int | None = None,
        seed: int = 123,
        niter: int = KMEANS_ITERATIONS,
    ) -> ResidualCodec:
        """Learn a codec from unit-length token vectors ``(n, dim)``. ``n_centroids`` defaults to
        :func:`default_centroids` of ``n_tokens`` (the collection's token count; default the sample's)."""
        import faiss

        x = np.ascontiguousarray(sample, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"a residual codec needs a sample of shape (n >= 1, dim), got {x.shape}")
        k = max(1, min(n_centroids or default_centroids(n_tokens or len(x), len(x)), len(x)))
        kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False)
        kmeans.train(x)
        centroids = kmeans.centroids / np.maximum(np.linalg.norm(kmeans.centroids, axis=1, keepdims=True), 1e-12)
        centroids = centroids.astype(np.float16)  # as stored, so residuals are taken from the centroids decoding uses
        levels = 2**bits
        codec = cls(bits, centroids, np.zeros((x.shape[1], levels - 1)), np.zeros((x.shape[1], levels)))
        stats = (
            x if len(x) <= STATS_SAMPLE else x[np.random.default_rng(seed).choice(len(x), STATS_SAMPLE, replace=False)]
        )
        residuals = stats - codec.centroids[codec.assign(stats)]
        ordered = np.sort(np.ascontiguousarray(residuals.T), axis=1)  # (dim, n): each dimension's residuals, ascending
        cutoffs = _quantiles(ordered, np.arange(1, levels) / levels)
        weights = _quantiles(ordered, (np.arange(levels) + 0.5) / levels)
        for _ in range(LLOYD_STEPS):
            weights = _bucket_means(ordered, cutoffs, weights)
            cutoffs = (weights[:, 1:] + weights[:, :-1]) / 2
        codec.cutoffs, codec.weights = cutoffs.astype(np.float32), weights.astype(np.float32)
        codec._set_table()
        return codec

    def _set_table(self) -> None:
        """The decode table, flat: row ``256 * byte position + byte value`` holds that byte's dimensions' residuals."""
        table = _decode_table(self.weights, self.bits)  # (bytes, 256, per_byte)
        self._table = table.reshape(-1, table.shape[2])
        self._offsets = np.arange(table.shape[0], dtype=np.intp) * 256

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Each vector's nearest centroid by inner product (the vectors are unit length), as uint16."""
        import faiss

        if self._index is None:
            self._index = faiss.IndexFlatIP(self.dim)
            self._index.add(self.centroids)
        _, ids = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        return ids[:, 0].astype(np.uint16)

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, packed)``: uint16 centroid ids ``(n,)`` and packed residual buckets ``(n, dim * bits / 8)`` uint8."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = self.assign(x)
        residuals = x - self.centroids[ids]
        buckets = np.zeros(x.shape, dtype=np.uint8)
        for level in range(self.cutoffs.shape[1]):  # 1 or 3 comparisons: the bucket is how many cutoffs lie below
            buckets += residuals > self.cutoffs[:, level]
        return ids, _pack(buckets, self.bits)

    def decode(self, ids: np.ndarray, packed: np.ndarray) -> np.ndarray:
        """float32 ``(n, dim)`` vectors back from :meth:`encode`'s output (not re-normalised)."""
        n = len(ids)
        rows = packed.reshape(n, -1).astype(np.intp) + self._offsets  # row of the flat table per packed byte
        out = np.take(self._table, rows, axis=0).reshape(n, self.dim)  # one gather: 3x faster than 2-d fancy indexing
        out += self.centroids[ids.astype(np.intp)]
        return out

    def to_blobs(self) -> dict[str, bytes | int]:
        """The codec as SQLite column values (float32 blobs; centroids as float16, as they are used unit length)."""
        return {
            "bits": self.bits,
            "k": len(self.centroids),
            "dim": self.dim,
            "centroids": self.centroids.astype(np.float16).tobytes(),
            "cutoffs": self.cutoffs.tobytes(),
            "weights": self.weights.tobytes(),
        }

    @classmethod
    def from_blobs(cls, bits: int, k: int, dim: int, centroids: bytes, cutoffs: bytes, weights: bytes) -> ResidualCodec:
        levels = 2**bits
        return cls(
            bits,
            np.frombuffer(centroids, dtype=np.float16).reshape(k, dim).astype(np.float32),
            np.frombuffer(cutoffs, dtype=np.float32).reshape(dim, levels - 1),
            np.frombuffer(weights, dtype=np.float32).reshape(dim, levels),
        )


def _quantiles(ordered: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per row of ``ordered`` (each sorted ascending), its quantiles ``q``: ``(rows, len(q))``, numpy's default
    (linear) definition, read off the sorted rows instead of partitioning them again per call."""
    position = q * (ordered.shape[1] - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, ordered.shape[1] - 1)
    below, above = ordered[:, low].astype(np.float64), ordered[:, high].astype(np.float64)
    return below + (position - low) * (above - below)


def _bucket_means(ordered: np.ndarray, cutoffs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per dimension, the mean residual in each bucket the cutoffs make (the old weight where a bucket is empty).
    ``ordered`` holds each dimension's residuals sorted, so a bucket is a slice found by binary search (a value above
    a cutoff lies above it, as :meth:`ResidualCodec.encode` counts it) and summed in one ``reduceat``."""
    dim, n = ordered.shape
    bounds = np.empty((dim, cutoffs.shape[1] + 2), dtype=np.intp)
    bounds[:, 0], bounds[:, -1] = 0, n
    for d in range(dim):
        bounds[d, 1:-1] = np.searchsorted(ordered[d], cutoffs[d], side="right")
    counts = np.diff(bounds, axis=1)
    starts = (bounds[:, :-1] + np.arange(dim)[:, None] * n).ravel()
    sums = np.add.reduceat(ordered.ravel(), np.minimum(starts, dim * n - 1), dtype=np.float64).reshape(counts.shape)
    return np.where(counts > 0, sums / np.maximum(counts, 1), weights)


def _pack(buckets: np.ndarray, bits: int) -> np.ndarray:
    """``(n, dim)`` bucket numbers (< 2**bits) -> ``(n, dim * bits / 8)`` bytes, first dimension in the high bits."""
    per_byte = 8 // bits
    groups = buckets.reshape(len(buckets), -1, per_byte).astype(np.uint8)
    shifts = (bits * np.arange(per_byte - 1, -1, -1)).astype(np.uint8)
    return np.bitwise_or.reduce(groups << shifts, axis=2).astype(np.uint8)


def _decode_table(weights: np.ndarray, bits: int) -> np.ndarray:
    """``(dim * bits / 8, 256, 8 / bits)`` float32: per packed byte position and value, its dimensions' residuals."""
    per_byte = 8 // bits
    values = np.arange(256, dtype=np.uint16)
    shifts = bits * np.arange(per_byte - 1, -1, -1)
    buckets = (values[:, None] >> shifts[None, :]) & (2**bits - 1)  # (256, per_byte)
    dims = weights.reshape(-1, per_byte, 2**bits)  # (bytes, per_byte, levels)
    cols = np.arange(per_byte)[None, :]
    return np.ascontiguousarray(dims[:, cols, buckets], dtype=np.float32)  # (bytes, 256, per_byte)
