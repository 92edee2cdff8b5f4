"""From passage hits to document hits: the first stage ranks passages; a document ranks by its best passage (MaxP).

Best passage is what Pyserini's MS MARCO document runs and Elasticsearch's chunked reranking do; no other
aggregation (sum, top-k mean) is offered. The second stage scores each document's best ``RERANK_PASSAGES``
first-stage passages (one by default) and the document takes the best of them, so with more than one a passage the
first stage ranked second in its document can be the one shown (benchmarks/bench_documents.py,
docs/guides/passages.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twostage.indexes.documents import document_of
from twostage.indexes.passage_store import StoredPassage

from .results import Hit, PassageMatch

#: a document search reads at most this many passages per document wanted (the mean passages per document, rounded up)
MAX_PASSAGES_PER_DOCUMENT = 8
#: the second stage scores each document's best this many first-stage passages. Two were measured against one
#: (bench_documents.py): within noise, +0.002 and +0.015 nDCG@10 on the long-document sets; on cacm's dev set
#: tests/test_defaults_regression.py (TWOSTAGE_FULL_REGRESSION=1) then measured MRR@10 0.7527 against the recorded
#: 0.7558 (one query; AMD EPYC, AVX-512). So one, the simpler and cheaper
RERANK_PASSAGES = 1


def passage_depth(k: int, documents: int, passages: int, group_by: str) -> int:
    """How many passages the first stage fetches for ``k`` hits: ``k`` when every document is one passage (the
    search is then exactly what it was before passages) or hits are passages; else ``k`` times the mean passages per
    document, rounded up and capped, so that grouping still leaves about ``k`` documents."""
    if group_by == "passage" or passages <= documents or documents == 0:
        return max(1, min(k, max(passages, 1)))
    factor = min(MAX_PASSAGES_PER_DOCUMENT, math.ceil(passages / documents))
    return max(1, min(k * factor, passages))


def group_by_document(
    candidates: Sequence[tuple[str, float]], passages: Mapping[str, StoredPassage], k: int
) -> list[tuple[str, float]]:
    """Each document's best passage, in the order of the (best-first) passage list, at most ``k`` documents."""
    seen: set[str] = set()
    out = []
    for key, score in candidates:
        passage = passages.get(key)
        if passage is None or passage.doc_id in seen:
            continue
        seen.add(passage.doc_id)
        out.append((key, score))
        if len(out) == k:
            break
    return out


def runners_up(
    candidates: Sequence[tuple[str, float]], passages: Mapping[str, StoredPassage], per_document: int
) -> dict[str, list[tuple[str, float]]]:
    """Each document's second to ``per_document``-th best passages in a best-first passage list: doc id -> passages."""
    out: dict[str, list[tuple[str, float]]] = {}
    for key, score in candidates:
        passage = passages.get(key)
        if passage is None:
            continue
        more = out.setdefault(passage.doc_id, [])
        if len(more) < per_document:  # the first is the document's best, the hit itself
            more.append((key, score))
    return {doc_id: more[1:] for doc_id, more in out.items() if len(more) > 1}


@dataclass
class PassageHits:
    """The first stage's passages as hits: the (grouped) candidate lists, their hits, and per query each hit's
    further passages for the second stage (doc id -> hits of the same document; empty when hits are passages)."""

    candidate_lists: list[list[tuple[str, float]]]
    hit_lists: list[list[Hit]]
    runners_up: list[dict[str, list[Hit]]]


def passage_hits(
    collection: Any,
    candidate_lists: list[list[tuple[str, float]]],
    group_by: str,
    k: int,
    per_document: int | None = None,
) -> PassageHits:
    """The first stage's passage lists as hits: grouped into each document's best passage ("document", at most ``k``
    documents, each with up to ``per_document`` - 1 runners-up for the second stage; None: ``RERANK_PASSAGES``) or
    kept as passages."""
    per_document = RERANK_PASSAGES if per_document is None else per_document
    stored = collection.passages(list({key for cands in candidate_lists for key, _ in cands}))
    more: list[dict[str, list[Hit]]] = [{} for _ in candidate_lists]
    if group_by == "document":
        if per_document > 1:  # the runners-up too (one passage per document, the default, has none)
            more = [
                {doc: [passage_hit(stored[key], score, 0) for key, score in keys] for doc, keys in found.items()}
                for found in (runners_up(cands, stored, per_document) for cands in candidate_lists)
            ]
        candidate_lists = [group_by_document(cands, stored, k) for cands in candidate_lists]
    hit_lists = [
        [
            passage_hit(stored[key], score, rank)
            for rank, (key, score) in enumerate((c for c in cands if c[0] in stored), 1)
        ]
        for cands in candidate_lists
    ]
    return PassageHits(candidate_lists, hit_lists, more)


def settle(hit_lists: Sequence[list[Hit]], queries: Sequence[str], explain_with: Any, top_k: int) -> None:
    """Each hit's passage takes the hit's final score; with ``explain_with`` (the bi-encoder), the returned hits'
    passages say which query words matched which of their words (``twostage.explain``)."""
    for hits in hit_lists:
        for hit in hits:
            if hit.passage is not None:
                hit.passage.score = hit.score
    if explain_with is not None:
        from .explain import explain_hits

        for query, hits in zip(queries, hit_lists):
            explain_hits(explain_with, query, hits[:top_k])


def best_passages(candidates: Sequence[tuple[str, float]], k: int) -> list[str]:
    """The keys of the top ``k`` documents' best passages in a best-first passage list (documents told by key)."""
    seen: set[str] = set()
    out = []
    for key, _ in candidates:
        doc_id = document_of(key)
        if doc_id not in seen:
            seen.add(doc_id)
            out.append(key)
            if len(out) == k:
                break
    return out


def passage_hit(passage: StoredPassage, score: float, rank: int) -> Hit:
    """A first-stage hit: the passage's document, with the passage (no rerank score yet)."""
    return Hit(
        doc_id=passage.doc_id,
        text=passage.text,
        title=passage.title,
        metadata=dict(passage.metadata),
        retrieval_score=float(score),
        retrieval_rank=rank,
        passage=PassageMatch(
            key=passage.key,
            number=passage.number,
            count=passage.count,
            start=passage.start,
            end=passage.end,
            text=passage.text,
            score=float(score),
            page=passage.page,
            headings=list(passage.headings),
            context=passage.context,
        ),
    )
