"""eval.metrics equals trec_eval (through pytrec_eval) and ir_measures, on hand-built and random runs."""

from __future__ import annotations

import math

import ir_measures
import numpy as np
import pytest
import pytrec_eval
from ir_measures import AP, RR, P, R, nDCG

from twostage.eval.metrics import DEFAULT_MEASURES, EvalResult, Measure, evaluate, format_table, parse_measure

TOL = 1e-9

# Our measure -> (trec_eval measure name, how to read our value from its output).
TREC_NAMES = {
    "nDCG@5": "ndcg_cut_5",
    "nDCG@10": "ndcg_cut_10",
    "nDCG": "ndcg",
    "R@5": "recall_5",
    "R@10": "recall_10",
    "R@20": "recall_20",
    "R@100": "recall_100",
    "P@5": "P_5",
    "P@10": "P_10",
    "MAP": "map",
    "MAP@10": "map_cut_10",
    "MRR": "recip_rank",
}
MEASURES = list(TREC_NAMES) + ["MRR@10", "MRR@3"]


def trec_eval_reference(run, qrels, rel_threshold, judged_only=False):
    """Per-query values of MEASURES computed by trec_eval's own code (pytrec_eval)."""
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, set(TREC_NAMES.values()), relevance_level=rel_threshold, judged_docs_only_flag=int(judged_only)
    )
    out = {}
    for qid, values in evaluator.evaluate(run).items():
        ours = {m: values[name] for m, name in TREC_NAMES.items()}
        rr = values["recip_rank"]  # 1/rank of the first relevant document; RR@k keeps it only if rank <= k
        ours["MRR@10"] = rr if rr >= 1 / 10 - 1e-12 else 0.0
        ours["MRR@3"] = rr if rr >= 1 / 3 - 1e-12 else 0.0
        out[qid] = ours
    return out


def ir_measures_reference(run, qrels, rel_threshold, with_rr=True):
    """Aggregates from ir_measures (which counts judged queries missing from the run as 0, like -c)."""
    t = rel_threshold
    measures = {
        "nDCG@10": nDCG @ 10,
        "nDCG@5": nDCG @ 5,
        "nDCG": nDCG,
        "R@10": R(rel=t) @ 10,
        "R@20": R(rel=t) @ 20,
        "P@5": P(rel=t) @ 5,
        "MAP": AP(rel=t),
        "MAP@10": AP(rel=t) @ 10,
        "MRR": RR(rel=t),
    }
    if with_rr:  # ir_measures computes RR@k with its msmarco provider, which breaks score ties the other way
        measures["MRR@10"] = RR(rel=t) @ 10
    values = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
    return {ours: values[theirs] for ours, theirs in measures.items()}


def assert_close(ours: dict, reference: dict, context: str = "") -> None:
    for key, expected in reference.items():
        assert math.isclose(ours[key], expected, abs_tol=TOL), f"{context} {key}: ours {ours[key]} != {expected}"


# A hand-built case with score ties, an unjudged document, graded labels, a judged query missing from the run,
# a run query missing from the qrels, and a query whose judgments are all non-relevant.
QRELS = {
    "q1": {"d1": 2, "d2": 0, "d3": 1, "d5": 3},
    "q2": {"d1": 0, "d5": 0},  # no relevant document
    "q3": {"d9": 1, "d8": 2},
    "q4": {"d1": 1},  # not in the run
    "q5": {"a": 1, "b": 1, "c": 1, "d": 1},  # all tied in the run
}
RUN = {
    "q1": {"d1": 1.0, "d2": 2.0, "d4": 3.0, "d3": 1.0, "d5": 0.5},
    "q2": {"d1": 1.0, "d2": 0.5},
    "q3": {"a": 1.0, "d9": 0.5, "x": 0.5, "d8": 0.1},
    "q5": {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0, "e": 0.0, "f": 0.0},
    "q9": {"x": 1.0},  # not judged at all
}


def test_ties_are_broken_by_docid_descending_as_trec_eval_does():
    # q1 ranks d4 (unjudged), d2 (0), then the tie d3 (1) before d1 (2), then d5 (3).
    result = evaluate({"q1": RUN["q1"]}, {"q1": QRELS["q1"]}, ["MRR@10", "P@5"], rel_threshold=2)
    assert result.per_query["q1"]["MRR@10"] == pytest.approx(1 / 4)
    result = evaluate({"q": {"a": 1.0, "b": 1.0}}, {"q": {"a": 1}}, ["MRR@10"])
    assert result.per_query["q"]["MRR@10"] == pytest.approx(1 / 2)


def test_ndcg_is_graded_and_ignores_the_threshold():
    # q3: a (unjudged), then tie x/d9 -> x first (docid descending), d9 (1) at 3, d8 (2) at 4.
    expected = (1 / math.log2(4) + 2 / math.log2(5)) / (2 + 1 / math.log2(3))
    for threshold in (1, 2, 3):
        result = evaluate({"q3": RUN["q3"]}, {"q3": QRELS["q3"]}, ["nDCG@10"], rel_threshold=threshold)
        assert result.per_query["q3"]["nDCG@10"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("rel_threshold", [1, 2, 3])
@pytest.mark.parametrize("judged_only", [False, True])
def test_hand_built_case_equals_trec_eval(rel_threshold, judged_only):
    result = evaluate(RUN, QRELS, MEASURES, rel_threshold=rel_threshold, judged_only=judged_only)
    reference = trec_eval_reference(RUN, QRELS, rel_threshold, judged_only)
    assert set(result.per_query) == set(reference) == {"q1", "q2", "q3", "q5"}
    for qid, values in reference.items():
        assert_close(result.per_query[qid], values, qid)
    for measure in MEASURES:
        mean = sum(v[measure] for v in reference.values()) / len(reference)
        assert result.aggregate[measure] == pytest.approx(mean, abs=TOL)
    assert result.n_queries == 4
    assert result.missing_queries == ["q4"]
    assert result.extra_queries == ["q9"]


@pytest.mark.parametrize("rel_threshold", [1, 2])
def test_hand_built_case_equals_ir_measures(rel_threshold):
    # ir_measures averages over every judged query (missing ones count 0): our complete=True.
    result = evaluate(RUN, QRELS, MEASURES, rel_threshold=rel_threshold, complete=True)
    assert result.n_queries == 5 and result.per_query["q4"] == {m: 0.0 for m in MEASURES}
    assert_close(result.aggregate, ir_measures_reference(RUN, QRELS, rel_threshold, with_rr=False))


def test_queries_without_relevant_documents_count_as_zero_like_trec_eval():
    result = evaluate(RUN, QRELS, ["MAP", "R@10", "MRR@10", "nDCG@10"])
    assert result.per_query["q2"] == {"MAP": 0.0, "R@10": 0.0, "MRR@10": 0.0, "nDCG@10": 0.0}
    assert result.n_queries == 4


def test_complete_counts_missing_queries_as_zero():
    partial = evaluate(RUN, QRELS, ["nDCG@10"])
    complete = evaluate(RUN, QRELS, ["nDCG@10"], complete=True)
    assert complete.aggregate["nDCG@10"] == pytest.approx(partial.aggregate["nDCG@10"] * 4 / 5)
    assert complete.missing_queries == partial.missing_queries == ["q4"]


def random_case(rng: np.random.Generator, ties: bool):
    """Random graded qrels and a run over judged and unjudged documents, with missing and extra queries."""
    qrels, run = {}, {}
    for q in range(int(rng.integers(1, 9))):
        qid = f"q{q}"
        n_judged = int(rng.integers(1, 25))
        labels = rng.integers(0, 4, size=n_judged) if rng.random() > 0.15 else np.zeros(n_judged, dtype=int)
        qrels[qid] = {f"d{j}": int(label) for j, label in enumerate(labels)}
        if rng.random() < 0.15:
            continue  # judged query missing from the run
        pool = [f"d{j}" for j in range(n_judged + 20)]  # d{n_judged}.. are unjudged
        docs = rng.choice(pool, size=int(rng.integers(1, len(pool))), replace=False)
        scores = rng.integers(0, 5, size=len(docs)).astype(float) if ties else rng.normal(size=len(docs))
        run[qid] = {str(d): float(s) for d, s in zip(docs, scores)}
    if rng.random() < 0.3:
        run["extra"] = {"d0": 1.0}
    if not set(run) & set(qrels):  # keep at least one query with both
        qid = next(iter(qrels))
        run[qid] = {"d0": 1.0, "d1": 1.0}
    return qrels, run


@pytest.mark.parametrize("seed", range(50))
def test_random_runs_equal_trec_eval_and_ir_measures(seed):
    rng = np.random.default_rng(seed)
    ties = seed % 2 == 0
    qrels, run = random_case(rng, ties)
    for rel_threshold in (1, 2):
        for judged_only in (False, True):
            result = evaluate(run, qrels, MEASURES, rel_threshold=rel_threshold, judged_only=judged_only)
            reference = trec_eval_reference(run, qrels, rel_threshold, judged_only)
            assert set(result.per_query) == set(reference)
            for qid, values in reference.items():
                assert_close(result.per_query[qid], values, f"seed {seed} {qid} l{rel_threshold} J{judged_only}")
        complete = evaluate(run, qrels, MEASURES, rel_threshold=rel_threshold, complete=True)
        assert_close(
            complete.aggregate,
            ir_measures_reference(run, qrels, rel_threshold, with_rr=not ties),
            f"seed {seed} l{rel_threshold}",
        )


def test_parse_measure_accepts_common_and_trec_eval_spellings():
    assert parse_measure("nDCG@10") == Measure("nDCG", 10)
    assert str(parse_measure("ndcg_cut_10")) == str(parse_measure("NDCG@10")) == "nDCG@10"
    assert str(parse_measure("RR@10")) == str(parse_measure("mrr@10")) == "MRR@10"
    assert str(parse_measure("recip_rank")) == "MRR"
    assert str(parse_measure("Recall@100")) == str(parse_measure("recall_100")) == "R@100"
    assert str(parse_measure("AP")) == str(parse_measure("map")) == "MAP"
    assert str(parse_measure("P_10")) == "P@10"
    for bad in ("nDCG@0", "R", "F1@10", "", "nDCG@x"):
        with pytest.raises(ValueError):
            parse_measure(bad)


def test_default_measures_and_result_shape():
    result = evaluate(RUN, QRELS)
    assert isinstance(result, EvalResult)
    assert list(result.aggregate) == list(DEFAULT_MEASURES)
    assert all(list(v) == list(DEFAULT_MEASURES) for v in result.per_query.values())


def test_evaluate_rejects_unusable_input():
    with pytest.raises(ValueError, match="no query has both"):
        evaluate({"x": {"d": 1.0}}, {"q": {"d": 1}})
    with pytest.raises(ValueError, match="NaN"):
        evaluate({"q": {"d": float("nan")}}, {"q": {"d": 1}})
    with pytest.raises(ValueError, match="rel_threshold"):
        evaluate({"q": {"d": 1.0}}, {"q": {"d": 1}}, rel_threshold=0)


def test_format_table_aligns_columns():
    table = format_table(
        [{"system": "bm25", "nDCG@10": 0.47963, "n": 54}, {"system": "bm25+ce", "nDCG@10": 0.7, "n": 54}]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["system", "nDCG@10", "n"]
    assert lines[2].split() == ["bm25", "0.4796", "54"]
    assert lines[3].split() == ["bm25+ce", "0.7000", "54"]
    assert len({len(line) for line in lines[1:]}) == 1
