"""Pseudo-relevance feedback in vector space (Rocchio): move the query towards its top first-stage documents.

q' = normalize(alpha * q + beta * mean(vectors of the top ``k`` documents)), then a second dense search with q'.
The document vectors are the collection's stored embeddings, so feedback costs one lookup and one more search, no
encoding. With unit vectors only the ratio beta / alpha matters; alpha is kept at 1 and beta is the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_K = 3
DEFAULT_BETA = 0.5


@dataclass(frozen=True)
class PRF:
    """Rocchio feedback settings: how many top documents (``k``) and their weight (``beta``; the query's is ``alpha``)."""

    k: int = DEFAULT_K
    beta: float = DEFAULT_BETA
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"prf k must be a positive integer (got {self.k!r})")
        if not (math.isfinite(self.beta) and math.isfinite(self.alpha)):
            raise ValueError(f"prf weights must be finite numbers (alpha {self.alpha}, beta {self.beta})")
        if self.beta < 0 or self.alpha < 0 or self.alpha + self.beta == 0:
            raise ValueError(f"prf weights must be >= 0 and not both 0 (alpha {self.alpha}, beta {self.beta})")

    @property
    def label(self) -> str:
        return f"prf:{self.k}:{self.beta:g}"

    @classmethod
    def parse(cls, spec: str | PRF) -> PRF:
        """``K`` or ``K:BETA`` (e.g. ``3:0.5``); ValueError naming the spec."""
        if isinstance(spec, PRF):
            return spec
        k, _, beta = str(spec).strip().partition(":")
        try:
            return cls(int(k), float(beta)) if beta else cls(int(k))
        except ValueError as err:
            if "prf" in str(err):
                raise
            raise ValueError(f"prf {spec!r}: expected K or K:BETA, e.g. 3:0.5") from None


def rocchio(query: np.ndarray, feedback: np.ndarray, prf: PRF) -> np.ndarray:
    """The moved query vector, unit length (float32): ``query`` (dim,) and ``feedback`` (n, dim) document vectors.
    With no feedback documents the query comes back unchanged."""
    q = np.asarray(query, dtype=np.float32)
    docs = np.asarray(feedback, dtype=np.float32).reshape(-1, q.shape[-1])
    if len(docs) == 0:
        return q
    moved = prf.alpha * q + prf.beta * docs.mean(axis=0)
    norm = float(np.linalg.norm(moved))
    return (moved / norm).astype(np.float32) if norm > 0 else q
