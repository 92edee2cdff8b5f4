"""Training data from ranked candidate lists: the query-level split, judged or teacher labels, and the row layouts
the sentence-transformers losses read (margin-MSE tuples, listwise lists, contrastive triples)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twostage.training.common import ScoredList

UNJUDGED = ("skip", "negative")


def split_by_query(qids: Sequence[str], val_size: int, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle query ids once (seeded) and cut off ``val_size`` of them for validation: a query never sits in both."""
    order = list(dict.fromkeys(qids))
    random.Random(seed).shuffle(order)
    val_size = max(0, min(val_size, len(order) - 1))
    return order[val_size:], order[:val_size]


def normalise_query(text: str) -> str:
    """Lower-cased words only, so the same question with other spacing or punctuation still counts as the same."""
    return " ".join(re.findall(r"\w+", text.lower()))


def exclude_overlap(queries: dict[str, str], held_out: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``queries`` without any whose id or normalised text is a held-out (test) query's; also the dropped ids."""
    texts = {normalise_query(t) for t in held_out.values()}
    dropped = [qid for qid, text in queries.items() if qid in held_out or normalise_query(text) in texts]
    drop = set(dropped)
    return {qid: text for qid, text in queries.items() if qid not in drop}, dropped


def judged_lists(lists: Sequence[ScoredList], qrels: dict[str, dict[str, int]], unjudged: str) -> list[ScoredList]:
    """Lists scored by their judgments: unjudged candidates are dropped ("skip") or count as label 0 ("negative");
    a list left without a relevant candidate, or without a non-relevant one, teaches nothing and is dropped."""
    if unjudged not in UNJUDGED:
        raise ValueError(f"unjudged must be one of {UNJUDGED}, not {unjudged!r}")
    out = []
    for item in lists:
        labels = qrels.get(item.qid, {})
        keep = [i for i, d in enumerate(item.doc_ids) if d in labels or unjudged == "negative"]
        scores = [float(max(labels.get(item.doc_ids[i], 0), 0)) for i in keep]
        if any(s > 0 for s in scores) and any(s <= 0 for s in scores):
            out.append(item.subset(keep, scores))
    return out


#: (last teacher rank, grade) of the pseudo-judgments; MRR counts grade >= TEACHER_REL_THRESHOLD (the teacher's top 3)
TEACHER_GRADES = ((1, 3), (3, 2), (5, 1))
TEACHER_REL_THRESHOLD = 2


def teacher_qrels(
    lists: Sequence[ScoredList], grades: Sequence[tuple[int, int]] = TEACHER_GRADES
) -> dict[str, dict[str, int]]:
    """Graded pseudo-judgments from the teacher's order: its top 1 → 3, ranks 2-3 → 2, ranks 4-5 → 1, the rest 0.
    Validation nDCG@10 against them measures how well a student reproduces the top of the teacher's list."""
    qrels: dict[str, dict[str, int]] = {}
    for item in lists:
        order = sorted(range(len(item.doc_ids)), key=lambda i: -item.scores[i])
        labels = {}
        for rank, i in enumerate(order, start=1):
            labels[item.doc_ids[i]] = next((grade for cutoff, grade in grades if rank <= cutoff), 0)
        qrels[item.qid] = labels
    return qrels


def _teacher_order(item: ScoredList) -> list[int]:
    return sorted(range(len(item.scores)), key=lambda i: (-item.scores[i], i))


def margin_rows(
    lists: Sequence[ScoredList], negatives: int, seed: int, *, positive_from: int = 3, rows_per_query: int = 1
) -> dict[str, list[Any]]:
    """(query, positive, negative_1..n) rows with the teacher's scores ``[pos, neg_1..neg_n]`` as labels (margin-MSE):
    the positive is one of the teacher's top ``positive_from``, the negatives are drawn from below it."""
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {
        "query": [],
        "positive": [],
        **{f"negative_{j + 1}": [] for j in range(negatives)},
        "label": [],
    }
    for item in lists:
        order = _teacher_order(item)
        if len(order) < negatives + 1:
            continue
        for _ in range(rows_per_query):
            p = rng.randrange(min(positive_from, len(order) - negatives))
            below = order[p + 1 :]
            picked = rng.sample(below, negatives)
            rows["query"].append(item.query)
            rows["positive"].append(item.texts[order[p]])
            for j, i in enumerate(picked):
                rows[f"negative_{j + 1}"].append(item.texts[i])
            rows["label"].append([float(item.scores[order[p]])] + [float(item.scores[i]) for i in picked])
    return rows


def listwise_rows(
    lists: Sequence[ScoredList], size: int, temperature: float, seed: int, *, keep_top: int = 2
) -> dict[str, list[Any]]:
    """(query, [docs], [scores / temperature]) rows for a listwise softmax loss: the teacher's top ``keep_top`` plus a
    random sample of the rest, shuffled, so each list spans easy and hard negatives."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"query": [], "docs": [], "labels": []}
    for item in lists:
        order = _teacher_order(item)
        if len(order) < 2:
            continue
        chosen = order[:keep_top] + rng.sample(order[keep_top:], max(0, min(size, len(order)) - keep_top))
        rng.shuffle(chosen)
        rows["query"].append(item.query)
        rows["docs"].append([item.texts[i] for i in chosen])
        rows["labels"].append([float(item.scores[i]) / temperature for i in chosen])
    return rows


def pointwise_rows(lists: Sequence[ScoredList], seed: int, *, negatives: int = 3) -> dict[str, list[Any]]:
    """(query, text, 0/1) rows for binary cross-entropy: each positive (score > 0) with up to ``negatives`` others."""
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"query": [], "text": [], "label": []}
    for item in lists:
        pos = [i for i, s in enumerate(item.scores) if s > 0]
        neg = [i for i, s in enumerate(item.scores) if s <= 0]
        for i in pos + rng.sample(neg, min(len(neg), negatives * max(1, len(pos)))):
            rows["query"].append(item.query)
            rows["text"].append(item.texts[i])
            rows["label"].append(1.0 if item.scores[i] > 0 else 0.0)
    return rows


def contrastive_rows(lists: Sequence[ScoredList], seed: int, *, skip_top: int = 10) -> dict[str, list[Any]]:
    """(anchor, positive, negative) triples for MultipleNegativesRankingLoss: the teacher's top-1 as positive and a
    hard negative from below the teacher's top ``skip_top`` (closer ones are too often unjudged positives)."""
    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"anchor": [], "positive": [], "negative": []}
    for item in lists:
        order = _teacher_order(item)
        if len(order) <= skip_top:
            continue
        rows["anchor"].append(item.query)
        rows["positive"].append(item.texts[order[0]])
        rows["negative"].append(item.texts[rng.choice(order[skip_top:])])
    return rows


def with_scores(lists: Sequence[ScoredList], scores: Sequence[Sequence[float]]) -> list[ScoredList]:
    """Copies of ``lists`` carrying new scores (e.g. the teacher's instead of the first stage's)."""
    return [replace(item, scores=[float(s) for s in new]) for item, new in zip(lists, scores)]
