"""Published TREC DL 2020 runs score as trec_eval and ir_measures say (skipped without ../shared/data)."""

from __future__ import annotations

import ir_measures
import pytest
from conftest import SHARED_DATA
from ir_measures import AP, RR, R, nDCG

from twostage.eval.datasets import load_dataset
from twostage.eval.metrics import evaluate
from twostage.eval.trec import read_run

DL20 = SHARED_DATA / "msmarco-dl20"
pytestmark = pytest.mark.skipif(not DL20.is_dir(), reason=f"{DL20} is not present (data lives in ../shared/data)")

# TREC DL conventions: nDCG@10 graded; MRR and recall count label >= 2 as relevant.
MEASURES = {
    "nDCG@10": nDCG @ 10,
    "MRR@10": RR(rel=2) @ 10,
    "R@10": R(rel=2) @ 10,
    "R@100": R(rel=2) @ 100,
    "R@1000": R(rel=2) @ 1000,
    "MAP": AP(rel=2),
}


@pytest.fixture(scope="module")
def dl20():
    return load_dataset(DL20)


def test_bm25_scores_the_published_numbers(dl20):
    result = evaluate(read_run(dl20.runs["bm25"]), dl20.qrels, list(MEASURES), rel_threshold=2)
    assert round(result.aggregate["nDCG@10"], 4) == 0.4796
    assert round(result.aggregate["MRR@10"], 4) == 0.6533
    assert result.n_queries == 54 and not result.missing_queries and not result.extra_queries


def test_every_shipped_run_equals_ir_measures(dl20):
    assert len(dl20.runs) >= 5
    for name, path in dl20.runs.items():
        run = read_run(path)
        ours = evaluate(run, dl20.qrels, list(MEASURES), rel_threshold=2, complete=True)
        theirs = ir_measures.calc_aggregate(list(MEASURES.values()), dl20.qrels, run)
        for key, measure in MEASURES.items():
            assert ours.aggregate[key] == pytest.approx(theirs[measure], abs=1e-9), f"{name} {key}"
