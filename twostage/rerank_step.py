"""The engine's second-stage step over hits: each query's top hits scored in one batched pass and sorted by it;
a hit keeps its one form (``results.Hit``) from the first stage to the output."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from twostage.indexes.documents import Document
from twostage.reranker.base import Candidate, Reranker
from twostage.reranker.score_fusion import FusedReranker

from .results import Hit


def hit_from(doc: Document, score: float, rank: int) -> Hit:
    """A first-stage hit for a stored document at ``rank`` with ``score`` (no rerank score yet)."""
    return Hit(
        doc_id=doc.id,
        text=doc.text,
        title=doc.title,
        metadata=dict(doc.metadata),
        retrieval_score=float(score),
        retrieval_rank=rank,
    )


def rerank_hits(
    reranker: Reranker,
    queries: Sequence[str],
    hit_lists: Sequence[list[Hit]],
    depth: int | None = None,
    runners_up: Sequence[Mapping[str, list[Hit]]] | None = None,
) -> tuple[list[list[Hit]], float]:
    """The engine's second stage: each query's top ``depth`` hits (all when None) scored in one batched pass and
    sorted by it, the rest beneath in first-stage order; returns the hit lists and the seconds spent scoring.
    Hits go by doc id as well as text, so MaxSim reads stored token vectors instead of encoding passages.
    ``runners_up`` (per query, doc id -> more passages of that hit's document) are scored too: a hit takes the best
    of its passages' scores, and shows that passage."""
    groups = [
        [[hit, *more.get(hit.doc_id, ())] for hit in hits[:depth]]
        for hits, more in zip(hit_lists, runners_up or [{}] * len(hit_lists))
    ]
    candidates = [[_candidate(h) for group in query_groups for h in group] for query_groups in groups]
    started = time.perf_counter()
    score_lists: list[Any] = [[] for _ in queries]
    inner_lists: list[Any] = score_lists
    if any(candidates) and isinstance(reranker, FusedReranker):  # the fused score orders; the own one calibrates
        score_lists, inner_lists = reranker.score_candidates_with_inner(list(queries), candidates)
    elif any(candidates):
        score_lists = inner_lists = reranker.score_candidates(list(queries), candidates)
    seconds = time.perf_counter() - started
    return [
        _apply_rerank(hits, *_best_of_groups(query_groups, scores, inner)) if hits else hits
        for hits, query_groups, scores, inner in zip(hit_lists, groups, score_lists, inner_lists)
    ], seconds


def _best_of_groups(
    groups: list[list[Hit]], scores: Sequence[float] | np.ndarray, inner: Sequence[float] | np.ndarray
) -> tuple[list[float], list[float]]:
    """Each group's best score and that passage's own score, the group's first hit taking the winning passage's text
    (its first-stage score and rank stay the document's)."""
    best, own, at = [], [], 0
    for group in groups:
        pick = at + int(np.argmax(np.asarray(scores[at : at + len(group)], dtype=np.float64)))
        winner = group[pick - at]
        if winner is not group[0]:
            group[0].text, group[0].passage = winner.text, winner.passage
        best.append(float(scores[pick]))
        own.append(float(inner[pick]))
        at += len(group)
    return best, own


def _candidate(hit: Hit) -> Hit | Candidate:
    """A hit as the reranker's candidate: itself, or for a passage of a longer document, that passage under its stored
    key (so MaxSim reads the passage's stored tokens, not the document's first passage's)."""
    if hit.passage is None or hit.passage.key == hit.doc_id:
        return hit
    return Candidate(hit.passage.key, hit.encoding_text, hit.retrieval_score)


def _apply_rerank(
    hits: list[Hit], scores: Sequence[float] | np.ndarray, inner: Sequence[float] | np.ndarray
) -> list[Hit]:
    """Attach second-stage scores (and the reranker's own, before fusion) to the first ``len(scores)`` hits and
    sort those by them (ties keep first-stage order); hits beyond the rerank depth follow in first-stage order,
    without a rerank score."""
    head, rest = hits[: len(scores)], hits[len(scores) :]
    for hit, score, own in zip(head, scores, inner):
        hit.rerank_score = float(score)
        hit.second_stage_score = float(own)
    ordered = sorted(head, key=lambda h: -(h.rerank_score or 0.0)) + rest  # sorted() is stable
    for rank, hit in enumerate(ordered, start=1):
        hit.rerank_rank = rank
    return ordered
