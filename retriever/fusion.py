"""Fusing first-stage runs, and the first-stage choice itself (dense, bm25 or hybrid).

Reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): score(d) = sum over runs of w / (k + rank).

Ranks are 1-based. For a run given as {docid: score}, ranks come from sorting as trec_eval does: score descending,
ties broken by docid in *descending* string order, so the rank RRF uses is the rank trec_eval would evaluate. For a
run given as a ranked list, the list order is the rank. Fused output is ordered the same trec_eval way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

DictRun = Mapping[str, Mapping[str, float]]  # {qid: {docid: score}}
ListRun = Sequence[Sequence[tuple[str, float]]]  # per query: [(docid, score), ...] best first


def trec_order(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """(docid, score) pairs sorted like trec_eval: score descending, then docid descending."""
    return sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)


def _fuse_one(
    ranked_lists: Sequence[Sequence[str]], k: float, weights: Sequence[float], depth: int | None
) -> dict[str, float]:
    """RRF scores for one query given each run's docids in rank order."""
    fused: dict[str, float] = {}
    for docids, weight in zip(ranked_lists, weights):
        seen: set[str] = set()
        rank = 0
        for docid in docids:
            if docid in seen:  # a repeated docid keeps its best rank
                continue
            seen.add(docid)
            rank += 1
            if depth is not None and rank > depth:
                break
            fused[docid] = fused.get(docid, 0.0) + weight / (k + rank)
    return fused


@overload
def reciprocal_rank_fusion(
    runs: Sequence[DictRun], k: float = 60, weights: Sequence[float] | None = None, depth: int | None = None
) -> dict[str, dict[str, float]]: ...
@overload
def reciprocal_rank_fusion(
    runs: Sequence[ListRun], k: float = 60, weights: Sequence[float] | None = None, depth: int | None = None
) -> list[list[tuple[str, float]]]: ...
def reciprocal_rank_fusion(
    runs: Sequence[Any], k: float = 60, weights: Sequence[float] | None = None, depth: int | None = None
) -> Any:  # the overloads above say which kind goes with which
    """Fuse runs of one kind: dict runs give {qid: {docid: rrf}}; per-query list runs give ranked lists.

    ``weights`` scale each run's contribution (default 1 each); ``depth`` keeps only each run's top-``depth``.
    A document missing from a run simply gets nothing from it.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("reciprocal_rank_fusion needs at least one run")
    weights = [1.0] * len(runs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(runs):
        raise ValueError(f"reciprocal_rank_fusion: {len(weights)} weights for {len(runs)} runs")
    if k < 0:
        raise ValueError("reciprocal_rank_fusion: k must be >= 0")

    if all(isinstance(run, Mapping) for run in runs):
        qids = list(dict.fromkeys(qid for run in runs for qid in run))
        return {
            qid: dict(
                trec_order(_fuse_one([[d for d, _ in trec_order(run.get(qid, {}))] for run in runs], k, weights, depth))
            )
            for qid in qids
        }
    if any(isinstance(run, Mapping) for run in runs):
        raise TypeError("reciprocal_rank_fusion: mix of dict runs and per-query list runs")
    n_queries = {len(run) for run in runs}
    if len(n_queries) != 1:
        raise ValueError(f"reciprocal_rank_fusion: runs cover different numbers of queries {sorted(n_queries)}")
    return [
        trec_order(_fuse_one([[d for d, _ in run[q]] for run in runs], k, weights, depth))
        for q in range(n_queries.pop())
    ]


def weighted_fusion(runs: Sequence[Sequence[tuple[str, float]]], weights: Sequence[float]) -> list[tuple[str, float]]:
    """One query's runs fused by a weighted sum of min-max normalised scores (each run scaled to [0, 1] over the
    documents it returned; a document missing from a run gets 0 from it), ordered the trec_eval way."""
    if len(runs) != len(weights):
        raise ValueError(f"weighted_fusion: {len(weights)} weights for {len(runs)} runs")
    fused: dict[str, float] = {}
    for run, weight in zip(runs, weights):
        if not run:
            continue
        scores = [score for _, score in run]
        low, span = min(scores), max(scores) - min(scores)
        for docid, score in run:
            norm = (score - low) / span if span > 0 else 1.0
            fused[docid] = fused.get(docid, 0.0) + float(weight) * norm
    return trec_order(fused)


FIRST_STAGES = ("dense", "bm25", "hybrid")
#: the first stage of a search that names none (chosen by benchmarks/bench_defaults.py; docs/benchmarks/defaults.md)
DEFAULT_FIRST_STAGE = "dense"
FUSIONS = ("rrf", "weighted")
DEFAULT_RRF_K = 60.0
DEFAULT_DENSE_WEIGHT = 0.5


@dataclass(frozen=True)
class FirstStage:
    """Which first stage searches: ``dense`` (the bi-encoder), ``bm25`` (the collection's lexical index) or ``hybrid``
    (both, fused by ``rrf`` with ``rrf_k``, or by ``weighted``: ``weight`` x dense + (1 - weight) x BM25, each
    min-max normalised per query)."""

    kind: str = "dense"
    fusion: str = "rrf"
    rrf_k: float = DEFAULT_RRF_K
    weight: float = DEFAULT_DENSE_WEIGHT

    def __post_init__(self) -> None:
        if self.kind not in FIRST_STAGES:
            raise ValueError(f"first stage must be one of {', '.join(FIRST_STAGES)} (got {self.kind!r})")
        if self.fusion not in FUSIONS:
            raise ValueError(f"hybrid fusion must be one of {', '.join(FUSIONS)} (got {self.fusion!r})")
        if not (math.isfinite(self.rrf_k) and self.rrf_k >= 0):
            raise ValueError(f"rrf k must be a finite number >= 0 (got {self.rrf_k:g})")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"hybrid weight must be between 0 and 1 (got {self.weight:g})")

    @property
    def uses_dense(self) -> bool:
        return self.kind in ("dense", "hybrid")

    @property
    def uses_lexical(self) -> bool:
        return self.kind in ("bm25", "hybrid")

    @property
    def label(self) -> str:
        """The spec :meth:`parse` reads back: ``dense``, ``bm25``, ``hybrid`` (RRF, k 60) or ``hybrid:weighted:W``."""
        if self.kind != "hybrid":
            return self.kind
        if self.fusion == "rrf":
            return "hybrid" if self.rrf_k == DEFAULT_RRF_K else f"hybrid:rrf:{self.rrf_k:g}"
        return f"hybrid:weighted:{self.weight:g}"

    @classmethod
    def parse(cls, spec: str | FirstStage | None) -> FirstStage:
        """``dense`` | ``bm25`` | ``hybrid`` | ``hybrid:rrf[:K]`` | ``hybrid:weighted[:W]`` (W the dense weight), None
        the default (``DEFAULT_FIRST_STAGE``); ValueError naming the spec."""
        if isinstance(spec, FirstStage):
            return spec
        if spec is None:
            return cls.parse(DEFAULT_FIRST_STAGE)
        parts = str(spec).strip().lower().split(":")
        kind, fusion, value = (parts + ["", ""])[:3]
        if len(parts) > 3 or (kind != "hybrid" and len(parts) > 1):
            raise ValueError(
                f"first stage {spec!r}: expected dense, bm25, hybrid, hybrid:rrf[:K] or hybrid:weighted[:W]"
            )
        number = None
        if value:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"first stage {spec!r}: {value!r} is not a number") from None
        fusion = fusion or "rrf"
        if number is None:
            return cls(kind, fusion)
        return cls(kind, fusion, rrf_k=number) if fusion == "rrf" else cls(kind, fusion, weight=number)

    def fuse(
        self, dense: Sequence[Sequence[tuple[str, float]]], lexical: Sequence[Sequence[tuple[str, float]]], k: int
    ) -> list[list[tuple[str, float]]]:
        """Per query, the top ``k`` of the dense and lexical lists fused as this stage says (hybrid only)."""
        if self.fusion == "rrf":
            fused = reciprocal_rank_fusion([lexical, dense], k=self.rrf_k)
        else:
            fused = [weighted_fusion([d, x], [self.weight, 1.0 - self.weight]) for d, x in zip(dense, lexical)]
        return [hits[:k] for hits in fused]
