"""Ranking metrics that reproduce trec_eval (9.x, as in pytrec_eval) exactly, without depending on it.

Semantics, all as trec_eval:
- each query's documents are ranked by score descending, ties broken by docid descending;
- documents absent from the qrels (or with a negative label) are unjudged and count as non-relevant;
  with `judged_only=True` they are dropped before ranking (trec_eval `-J`);
- nDCG uses graded gains (gain = label, labels <= 0 give nothing), discount log2(rank + 1), and an ideal
  ranking of all judged documents with label > 0; `rel_threshold` does not apply to it (`ndcg_cut.k`);
- MRR, recall, precision and MAP count a document relevant when label >= `rel_threshold` (trec_eval `-l`;
  use 2 for TREC DL): MRR@k = `recip_rank` over the top k, R@k = `recall_k`, P@k = `P_k`,
  MAP = `map`, MAP@k = `map_cut_k`;
- a query in the qrels with no relevant document still counts, scoring 0 (R, MAP, MRR) as in trec_eval;
- queries in the qrels but not in the run are ignored (mean over the run's judged queries), or count as 0 with
  `complete=True` (trec_eval `-c`); run queries not in the qrels are ignored. Both are listed in the result.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from twostage.eval.errors import EvalInputError
from twostage.eval.trec import Qrels, Run, ranked

DEFAULT_MEASURES = ("MRR@10", "nDCG@10", "R@10", "R@100", "R@1000", "MAP")

# Accepted spellings (lower-case) of each measure's canonical name.
_ALIASES = {
    "ndcg": "nDCG",
    "ndcg_cut": "nDCG",
    "mrr": "MRR",
    "rr": "MRR",
    "recip_rank": "MRR",
    "r": "R",
    "recall": "R",
    "p": "P",
    "precision": "P",
    "map": "MAP",
    "ap": "MAP",
    "map_cut": "MAP",
}
_NEEDS_CUTOFF = {"R", "P"}
_MEASURE_RE = re.compile(r"^\s*([A-Za-z_]+?)(?:\s*[@._]\s*(\d+))?\s*$")


@dataclass(frozen=True)
class Measure:
    """One measure: a canonical name (nDCG, MRR, R, P, MAP) and an optional rank cutoff."""

    name: str
    cutoff: int | None = None

    def __str__(self) -> str:
        return self.name if self.cutoff is None else f"{self.name}@{self.cutoff}"


def parse_measure(text: str | Measure) -> Measure:
    """Parse "nDCG@10", "MRR@10", "RR@10", "R@100", "Recall@100", "P@10", "MAP", "AP@100", or trec_eval
    names such as "ndcg_cut_10", "recall_100", "P_10", "map", "recip_rank" (case-insensitive).

    `str()` of the result is the canonical key used in `EvalResult`.
    """
    if isinstance(text, Measure):
        return text
    match = _MEASURE_RE.match(text)
    name = _ALIASES.get(match.group(1).lower()) if match else None
    if match is None or name is None:
        raise ValueError(f"unknown measure {text!r}; expected one of nDCG[@k], MRR[@k], R@k, P@k, MAP[@k]")
    cutoff = None if match.group(2) is None else int(match.group(2))
    if cutoff is not None and cutoff < 1:
        raise ValueError(f"measure {text!r}: the cutoff must be a positive integer")
    if cutoff is None and name in _NEEDS_CUTOFF:
        raise ValueError(f"measure {text!r} needs a cutoff, e.g. {name}@100")
    return Measure(name, cutoff)


@dataclass
class EvalResult:
    """Mean and per-query scores, keyed by canonical measure names (e.g. "nDCG@10", "MRR@10")."""

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]]
    n_queries: int
    missing_queries: list[str]
    extra_queries: list[str]


def _ndcg(rels: Sequence[int], ideal: Sequence[int], cutoff: int | None) -> float:
    """trec_eval ndcg_cut: sum of label / log2(rank + 1) over the top `cutoff`, over the same for the ideal."""

    def dcg(gains: Iterable[int]) -> float:
        total = 0.0
        for i, gain in enumerate(gains):
            if gain > 0:
                total += gain / math.log2(i + 2)
        return total

    ideal_dcg = dcg(ideal[:cutoff])
    return dcg(rels[:cutoff]) / ideal_dcg if ideal_dcg > 0.0 else 0.0


def _score(measure: Measure, rels: Sequence[int], ideal: Sequence[int], num_rel: int, threshold: int) -> float:
    """One measure for one query, from the labels of its ranked documents (-1 = unjudged)."""
    top = rels[: measure.cutoff]
    if measure.name == "nDCG":
        return _ndcg(rels, ideal, measure.cutoff)
    if measure.name == "MRR":
        return next((1.0 / (i + 1) for i, rel in enumerate(top) if rel >= threshold), 0.0)
    if measure.name == "P":
        return sum(rel >= threshold for rel in top) / cast(int, measure.cutoff)  # P always has one (_NEEDS_CUTOFF)
    if num_rel == 0:
        return 0.0
    if measure.name == "R":
        return sum(rel >= threshold for rel in top) / num_rel
    if measure.name == "MAP":
        hits, total = 0, 0.0
        for i, rel in enumerate(top):
            if rel >= threshold:
                hits += 1
                total += hits / (i + 1.0)
        return total / num_rel
    raise ValueError(f"unsupported measure {measure}")


def evaluate_query(
    scores: Mapping[str, float],
    labels: Mapping[str, int],
    measures: Sequence[Measure],
    *,
    rel_threshold: int = 1,
    judged_only: bool = False,
) -> dict[str, float]:
    """Score one query's documents `{docid: score}` against its judgments `{docid: label}`."""
    rels = [labels.get(docid, -1) for docid, _ in ranked(dict(scores))]
    rels = [rel if rel >= 0 else -1 for rel in rels]
    if judged_only:
        rels = [rel for rel in rels if rel >= 0]
    ideal = sorted((label for label in labels.values() if label > 0), reverse=True)
    num_rel = sum(label >= rel_threshold for label in labels.values())
    return {str(m): _score(m, rels, ideal, num_rel, rel_threshold) for m in measures}


def _check_scores(qid: str, scores: Mapping[str, float]) -> None:
    for docid, score in scores.items():
        if isinstance(score, float) and math.isnan(score):
            raise EvalInputError(f"run: score of document {docid!r} for query {qid!r} is NaN")


def evaluate(
    run: Run,
    qrels: Qrels,
    measures: Iterable[str | Measure] = DEFAULT_MEASURES,
    *,
    rel_threshold: int = 1,
    judged_only: bool = False,
    complete: bool = False,
) -> EvalResult:
    """Evaluate `run` against `qrels` with trec_eval semantics (see the module docstring).

    `rel_threshold` is the lowest label counted relevant by MRR, R, P and MAP (2 for TREC DL); nDCG is graded.
    `complete=False` averages over the run's judged queries (trec_eval default); `complete=True` also counts
    each judged query missing from the run as 0 (trec_eval -c), and lists it in `per_query` with zeros.
    """
    if rel_threshold < 1:
        raise ValueError(f"rel_threshold must be >= 1, not {rel_threshold!r}")
    if isinstance(measures, (str, Measure)):
        measures = [measures]
    parsed = list(dict.fromkeys(parse_measure(m) for m in measures))
    if not parsed:
        raise ValueError("no measures requested")
    missing = [qid for qid in qrels if qid not in run]
    extra = [qid for qid in run if qid not in qrels]
    per_query: dict[str, dict[str, float]] = {}
    for qid, labels in qrels.items():
        if qid in run:
            _check_scores(qid, run[qid])
            per_query[qid] = evaluate_query(
                run[qid], labels, parsed, rel_threshold=rel_threshold, judged_only=judged_only
            )
        elif complete:
            per_query[qid] = {str(m): 0.0 for m in parsed}
    if not per_query:
        raise EvalInputError(
            f"no query has both results and judgments (run: {len(run)} queries, "
            f"qrels: {len(qrels)} queries); are the query ids the same?"
        )
    aggregate = {}
    for m in parsed:
        key = str(m)
        total = 0.0
        for values in per_query.values():
            total += values[key]
        aggregate[key] = total / len(per_query)
    return EvalResult(aggregate, per_query, len(per_query), missing, extra)


def format_table(
    rows: Sequence[Mapping[str, object]],
    *,
    columns: Sequence[str] | None = None,
    digits: int = 4,
    column_digits: Mapping[str, int] | None = None,
) -> str:
    """Render rows of `{column: value}` as an aligned plain-text table (floats to `digits` places, or to
    `column_digits[column]` for the columns it names)."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    column_digits = column_digits or {}

    def cell(value: object, col: str) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{column_digits.get(col, digits)}f}"
        return str(value)

    cells = [[cell(row.get(col), col) for col in columns] for row in rows]
    numeric = [all(isinstance(row.get(col), (int, float)) or row.get(col) is None for row in rows) for col in columns]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(columns)), rule] + [line(r) for r in cells])
