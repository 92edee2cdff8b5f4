"""Product quantisation of token vectors: ``m`` sub-vectors, each stored as the id of its nearest of ``2**nbits``
learned sub-centroids (faiss ``ProductQuantizer``), for token stores that must be smaller than 1-2 bits a dimension.

Vectors are first rotated onto the sample's principal axes, dealt round-robin to the sub-vectors so each gets a like
share of variance. A 384-d MiniLM token at the defaults (32 sub-vectors of 12 dimensions, 9-bit codes: 512
sub-centroids each) is 36 bytes, 0.75 bits a dimension, 37% of the ``2bit`` residual code's 98 bytes. The scheme was
chosen on cacm by agreement with float16 MaxSim's top 10 over 100 dense candidates, against other splits of the same
size (48 x 6 bits, 96 x 3), unrotated PQ, residual PQ and PCA-reduced 2-bit residual codes (README, "MaxSim").
Decoding is a table gather per sub-vector (numpy) and one matrix product back out of the rotation.
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
    """``codebooks`` ``(m, 2**nbits, dim / m)`` float32: each sub-vector's sub-centroids; ``rotation`` ``(dim, dim)``
    (orthonormal rows, or None): vectors are coded as ``rotation @ x`` and decoded back."""

    nbits: int
    codebooks: np.ndarray
    rotation: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.codebooks = np.ascontiguousarray(self.codebooks, dtype=np.float32)
        if self.codebooks.ndim != 3 or self.codebooks.shape[1] != 2**self.nbits:
            raise ValueError(f"codebooks of shape {self.codebooks.shape} do not fit {self.nbits}-bit codes")
        if self.rotation is not None:
            self.rotation = np.ascontiguousarray(self.rotation, dtype=np.float32)
            if self.rotation.shape != (self.dim, self.dim):
                raise ValueError(f"a rotation of shape {self.rotation.shape} does not fit {self.dim} dimensions")
        import faiss

        m, ksub, dsub = self.codebooks.shape
        self._pq = faiss.ProductQuantizer(m * dsub, m, self.nbits)
        faiss.copy_array_to_vector(self.codebooks.ravel(), self._pq.centroids)
        self._table = self.codebooks.reshape(m * ksub, dsub)  # row ksub * sub-vector + code
        self._offsets = np.arange(m, dtype=np.intp) * ksub
        self._weights = (1 << np.arange(self.nbits)).astype(np.intp)  # faiss packs each code's bits LSB first

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
    def train(
        cls,
        sample: np.ndarray,
        *,
        subvectors: int | None = None,
        nbits: int = NBITS,
        rotate: bool = True,
        seed: int = 123,
    ) -> ProductCodec:
        """Learn sub-centroids from unit-length token vectors ``(n, dim)``, after :func:`balanced_rotation` unless
        ``rotate`` is False; a sample too small for ``2**nbits`` sub-centroids (~39 points each) gets fewer bits."""
        import faiss

        x = np.ascontiguousarray(sample, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"a product codec needs a sample of shape (n >= 1, dim), got {x.shape}")
        m = subvectors or default_subvectors(x.shape[1])
        if x.shape[1] % m:
            raise ValueError(f"{m} sub-vectors do not divide {x.shape[1]} dimensions")
        bits = max(1, min(nbits, int(math.floor(math.log2(max(len(x) // POINTS_PER_CENTROID, 2))))))
        rotation = balanced_rotation(x, m) if rotate else None
        pq = faiss.ProductQuantizer(x.shape[1], m, bits)
        pq.cp.seed = seed
        pq.train(x if rotation is None else np.ascontiguousarray(x @ rotation.T))
        return cls(bits, faiss.vector_to_array(pq.centroids).reshape(m, 2**bits, -1), rotation)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, bytes_per_token)`` uint8 codes."""
        x = np.asarray(vectors, dtype=np.float32)
        return self._pq.compute_codes(np.ascontiguousarray(x if self.rotation is None else x @ self.rotation.T))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32 ``(n, dim)`` vectors back from :meth:`encode`'s codes (not re-normalised). In numpy, not faiss:
        faiss's OpenMP start-up per call made reading 100 passages 5x slower on a busy 2-core CPU."""
        packed = np.asarray(codes, dtype=np.uint8).reshape(-1, self.bytes_per_token)
        m = self.subvectors
        bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : m * self.nbits].reshape(len(packed), m, -1)
        rows = bits.astype(np.intp) @ self._weights + self._offsets  # (n, m) rows of the flat table
        out = np.take(self._table, rows, axis=0).reshape(len(packed), self.dim)
        return out if self.rotation is None else out @ self.rotation

    def to_blobs(self) -> dict[str, bytes | int | None]:
        """The codec as SQLite column values."""
        return {
            "nbits": self.nbits,
            "m": self.subvectors,
            "dim": self.dim,
            "codebooks": self.codebooks.tobytes(),
            "rotation": None if self.rotation is None else self.rotation.tobytes(),
        }

    @classmethod
    def from_blobs(cls, nbits: int, m: int, dim: int, codebooks: bytes, rotation: bytes | None) -> ProductCodec:
        return cls(
            nbits,
            np.frombuffer(codebooks, dtype=np.float32).reshape(m, 2**nbits, dim // m),
            None if rotation is None else np.frombuffer(rotation, dtype=np.float32).reshape(dim, dim),
        )


def balanced_rotation(sample: np.ndarray, subvectors: int) -> np.ndarray:
    """The sample's principal axes (of ``x^T x``, uncentred: MaxSim scores inner products) as rows, dealt out
    round-robin by variance so each sub-vector gets an equal share of strong and weak axes (OPQ's initialisation)."""
    x = np.asarray(sample, dtype=np.float64)
    values, vectors = np.linalg.eigh(x.T @ x / len(x))
    order = np.argsort(values)[::-1]
    per = x.shape[1] // subvectors
    dealt = [order[j * subvectors + s] for s in range(subvectors) for j in range(per)]
    return vectors[:, dealt].T.astype(np.float32)
