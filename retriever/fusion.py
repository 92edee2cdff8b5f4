"""Reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): score(d) = sum over runs of w / (k + rank).

Ranks are 1-based. For a run given as {docid: score}, ranks come from sorting as trec_eval does: score descending,
ties broken by docid in *descending* string order, so the rank RRF uses is the rank trec_eval would evaluate. For a
run given as a ranked list, the list order is the rank. Fused output is ordered the same trec_eval way.
"""
from __future__ import annotations

from typing import Mapping, Sequence, overload

DictRun = Mapping[str, Mapping[str, float]]  # {qid: {docid: score}}
ListRun = Sequence[Sequence[tuple[str, float]]]  # per query: [(docid, score), ...] best first


def trec_order(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """(docid, score) pairs sorted like trec_eval: score descending, then docid descending."""
    return sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)


def _fuse_one(ranked_lists: Sequence[Sequence[str]], k: float, weights: Sequence[float], depth: int | None) -> dict[str, float]:
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
def reciprocal_rank_fusion(runs, k=60, weights=None, depth=None):
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
                trec_order(
                    _fuse_one([[d for d, _ in trec_order(run.get(qid, {}))] for run in runs], k, weights, depth)
                )
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
