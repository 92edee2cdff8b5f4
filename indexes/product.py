"""Product quantisation of token vectors: ``m`` sub-vectors, each stored as the id of its nearest of ``2**nbits``
learned sub-centroids (faiss ``ProductQuantizer``), for token stores that must be smaller than 1-2 bits a dimension.

A 384-d MiniLM token at the defaults (32 sub-vectors of 12 dimensions, 9-bit codes) is 36 bytes, 0.75 bits a
dimension: a third of the ``2bit`` residual code's 98 bytes. Chosen on cacm by MaxSim nDCG@10 and top-10 agreement
with float16 against PCA-reduced 2-bit residuals, residual PQ, OPQ and 1-bit codes of the same size (README, MaxSim).
Decoding is faiss's table lookup per sub-vector, no arithmetic per bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: dimensions per sub-vector the default aims at (384 -> 32 sub-vectors)
SUB_DIM = 12
#: bits per sub-vector code (512 sub-centroids)
NBITS = 9
#: faiss k-means wants at least this many training points per centroid (it warns below 39)
POINTS_PER_CENTROID = 39


def default_subvectors(dim: int) -> int:
    """The most sub-vectors dividing ``dim`` with at least :data:`SUB_DIM` dimensions each (at least 1)."""
    return max((m for m in range(1, dim // SUB_DIM + 1) if dim % m == 0), default=1)


@dataclass
class ProductCodec:
    """``codebooks`` ``(m, 2**nbits, dim / m)`` float32: each sub-vector's sub-centroids."""

    nbits: int
    codebooks: np.ndarray

    def __post_init__(self) -> None:
        self.codebooks = np.ascontiguousarray(self.codebooks, dtype=np.float32)
        if self.codebooks.ndim != 3 or self.codebooks.shape[1] != 2**self.nbits:
            raise ValueError(f"codebooks of shape {self.codebooks.shape} do not fit {self.nbits}-bit codes")
        import faiss

        m, ksub, dsub = self.codebooks.shape
        self._pq = faiss.ProductQuantizer(m * dsub, m, self.nbits)
        faiss.copy_array_to_vector(self.codebooks.ravel(), self._pq.centroids)

    @property
    def dim(self) -> int:
        return int(self.codebooks.shape[0] * self.codebooks.shape[2])

    @property
    def subvectors(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def bytes_per_token(self) -> int:
        """Stored bytes per token: ``m * nbits`` bits, rounded up to whole bytes."""
        return int(self._pq.code_size)

    @classmethod
    def train(cls, sample: np.ndarray, *, subvectors: int | None = None, nbits: int = NBITS, seed: int = 123
              ) -> "ProductCodec":
        """Learn sub-centroids from unit-length token vectors ``(n, dim)``; a sample too small for ``2**nbits``
        sub-centroids (about 39 points each) gets fewer bits."""
        import faiss

        x = np.ascontiguousarray(sample, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"a product codec needs a sample of shape (n >= 1, dim), got {x.shape}")
        m = subvectors or default_subvectors(x.shape[1])
        if x.shape[1] % m:
            raise ValueError(f"{m} sub-vectors do not divide {x.shape[1]} dimensions")
        bits = max(1, min(nbits, int(math.floor(math.log2(max(len(x) // POINTS_PER_CENTROID, 2))))))
        pq = faiss.ProductQuantizer(x.shape[1], m, bits)
        pq.cp.seed = seed
        pq.train(x)
        return cls(bits, faiss.vector_to_array(pq.centroids).reshape(m, 2**bits, -1))

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, bytes_per_token)`` uint8 codes."""
        return self._pq.compute_codes(np.ascontiguousarray(vectors, dtype=np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32 ``(n, dim)`` vectors back from :meth:`encode`'s codes (not re-normalised)."""
        return self._pq.decode(np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, self.bytes_per_token))

    def to_blobs(self) -> dict[str, bytes | int]:
        """The codec as SQLite column values."""
        return {"nbits": self.nbits, "m": self.subvectors, "dim": self.dim, "codebooks": self.codebooks.tobytes()}

    @classmethod
    def from_blobs(cls, nbits: int, m: int, dim: int, codebooks: bytes) -> "ProductCodec":
        return cls(nbits, np.frombuffer(codebooks, dtype=np.float32).reshape(m, 2**nbits, dim // m))
