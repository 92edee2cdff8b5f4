"""Fuse the two stages' scores: a weighted sum of per-query normalised scores, or RRF of the two rankings.

final = w * norm(second) + (1 - w) * norm(first), normalised per query over the candidates reranked together.
The default normalisation is the z-score: a MaxSim score is a sum over query tokens (its scale grows with the query's
length) while a cosine first-stage score has a small spread, and the z-score equalises both location and spread
from every candidate, whereas min-max pins each scale to the single best and worst candidate. ``rrf`` needs no
weight: 1/(k + first-stage rank) + 1/(k + second-stage rank), k = 60 as in Cormack et al. (2009).
The first-stage score travels with each :class:`Candidate`, so this stays on the reranker side of the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import CandidateLike, Reranker

METHODS = ("zscore", "minmax", "rrf")
DEFAULT_WEIGHT = 0.5
RRF_K = 60.0


@dataclass(frozen=True)
class Fusion:
    """How to combine first- and second-stage scores: ``method`` (zscore, minmax, rrf) and the second stage's weight."""

    method: str = "zscore"
    weight: float = DEFAULT_WEIGHT  # of the second stage, in [0, 1]; unused by rrf
    k: float = RRF_K  # rrf only

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fusion weight must be between 0 and 1 (got {self.weight})")
        if not (math.isfinite(self.k) and self.k >= 0):
            raise ValueError(f"fusion rrf k must be a finite number >= 0 (got {self.k})")

    @property
    def label(self) -> str:
        return "rrf" if self.method == "rrf" else f"{self.method}:{self.weight:g}"

    @classmethod
    def parse(cls, spec: str | Fusion) -> Fusion:
        """``rrf``, ``zscore``, ``minmax`` or ``METHOD:WEIGHT`` (e.g. ``zscore:0.3``); ValueError naming the spec."""
        if isinstance(spec, Fusion):
            return spec
        method, _, value = str(spec).strip().lower().partition(":")
        if not value:
            return cls(method)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"fusion {spec!r}: {value!r} is not a number") from None
        return cls(method, k=number) if method == "rrf" else cls(method, weight=number)


def fuse_scores(
    first: Sequence[float] | np.ndarray, second: Sequence[float] | np.ndarray, fusion: Fusion
) -> np.ndarray:
    """One query's fused scores (float64, candidate order kept) from its first- and second-stage scores."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"fuse_scores: {a.size} first-stage scores but {b.size} second-stage scores")
    if fusion.method == "rrf":
        return 1.0 / (fusion.k + _ranks(a)) + 1.0 / (fusion.k + _ranks(b))
    norm = _zscore if fusion.method == "zscore" else _minmax
    return fusion.weight * norm(b) + (1.0 - fusion.weight) * norm(a)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks by score descending; ties keep input order (the first stage's order)."""
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, scores.size + 1)
    return ranks


def _zscore(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min() if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


class FusedReranker(Reranker):
    """A reranker whose scores are fused with the candidates' first-stage scores. Normalisation is per call, so hand
    it each query's whole reranked list at once (as ``Engine.search`` does)."""

    def __init__(self, inner: Reranker, fusion: Fusion | str):
        self.inner = inner
        self.fusion = Fusion.parse(fusion)
        self.name = f"{inner.name}+{self.fusion.label}"

    @property
    def truncated(self) -> int:  # type: ignore[override]
        return self.inner.truncated

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """Without first-stage scores there is nothing to fuse: the inner reranker's scores."""
        return self.inner.score(query, texts)

    def score_candidates(
        self, queries: Sequence[str], candidates_per_query: Sequence[Sequence[CandidateLike]]
    ) -> list[np.ndarray]:
        """The inner reranker's scores, each query's fused with its candidates' first-stage ``score``."""
        return self.score_candidates_with_inner(queries, candidates_per_query)[0]

    def score_candidates_with_inner(
        self, queries: Sequence[str], candidates_per_query: Sequence[Sequence[CandidateLike]]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The fused scores and the inner reranker's own, from one scoring pass."""
        second = self.inner.score_candidates(queries, candidates_per_query)
        fused = [
            fuse_scores([c.retrieval_score for c in candidates], scores, self.fusion)
            for candidates, scores in zip(candidates_per_query, second)
        ]
        return fused, second
