"""Paired significance tests: identical systems are not different, a consistently better one is."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from twostage.eval.metrics import evaluate
from twostage.eval.significance import Comparison, compare, paired_randomization_test, paired_t_test


def test_identical_systems_give_p_one():
    scores = np.random.default_rng(1).random(50)
    assert paired_randomization_test(scores, scores) == 1.0
    assert paired_t_test(scores, scores) == 1.0


def test_consistently_better_system_is_significant():
    rng = np.random.default_rng(2)
    a = rng.random(50) * 0.8
    b = a + 0.05 + rng.normal(0, 0.02, size=50)
    assert paired_randomization_test(a, b) < 0.01
    assert paired_t_test(a, b) < 0.01
    assert paired_t_test(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)


def test_randomization_test_matches_the_exact_permutation_test():
    a = np.array([0.2, 0.5, 0.1, 0.9, 0.4, 0.3, 0.6])
    b = np.array([0.3, 0.45, 0.4, 0.95, 0.2, 0.5, 0.7])
    diff = b - a
    flips = [abs(np.dot(signs, diff)) / diff.size for signs in itertools.product([-1, 1], repeat=diff.size)]
    exact = np.mean(np.array(flips) >= abs(diff.mean()) - 1e-12)
    assert paired_randomization_test(a, b, n_resamples=20000) == pytest.approx(exact, abs=0.015)
    assert paired_randomization_test(a, b, seed=3) == paired_randomization_test(b, a, seed=3)


def test_compare_per_query_results():
    qrels = {f"q{i}": {"good": 1, "bad": 0} for i in range(50)}
    worse = {q: {"bad": 2.0, "good": 1.0} for q in qrels}  # relevant doc at rank 2
    better = {q: {"good": 2.0, "bad": 1.0} for q in qrels}  # relevant doc at rank 1
    a, b = evaluate(worse, qrels, ["MRR@10"]), evaluate(better, qrels, ["MRR@10"])
    result = compare(a.per_query, b.per_query, "RR@10")
    assert isinstance(result, Comparison)
    assert (result.measure, result.n, result.mean_a, result.mean_b) == ("MRR@10", 50, 0.5, 1.0)
    assert result.delta == pytest.approx(0.5)
    assert result.p_randomization < 0.01 and result.p_ttest == 0.0
    same = compare(a.per_query, a.per_query, "MRR@10")
    assert same.delta == 0.0 and same.p_randomization == 1.0 and same.p_ttest == 1.0


def test_compare_refuses_different_queries_or_measures():
    a = {"q1": {"MAP": 0.1}, "q2": {"MAP": 0.2}}
    with pytest.raises(ValueError, match="different queries"):
        compare(a, {"q1": {"MAP": 0.3}}, "MAP")
    with pytest.raises(ValueError, match="missing"):
        compare(a, a, "nDCG@10")
    with pytest.raises(ValueError):
        paired_randomization_test([1.0, 2.0], [1.0])
