"""Paired significance tests over per-query scores of two systems evaluated on the same queries.

The randomization (permutation) test is the one recommended for IR by Smucker, Allan & Carterette (CIKM 2007);
the paired t-test is given alongside because most papers report it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from twostage.eval.metrics import parse_measure


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(
            f"paired scores must be two 1-D sequences of equal length, got {a_arr.shape} and {b_arr.shape}"
        )
    return b_arr - a_arr


def paired_randomization_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that the mean of b - a is 0, by randomly swapping each query's pair of scores.

    p = (1 + resamples with |mean difference| >= observed) / (1 + n_resamples), so it is never 0;
    identical systems give exactly 1.
    """
    diff = _differences(a, b)
    if diff.size == 0:
        raise ValueError("no paired scores to test")
    observed = abs(diff.mean())
    rng = np.random.default_rng(seed)
    tolerance = 1e-12 * max(1.0, float(np.abs(diff).max()))
    at_least, done, batch = 0, 0, max(1, min(n_resamples, 2_000_000 // diff.size))
    while done < n_resamples:
        size = min(batch, n_resamples - done)
        signs = rng.integers(0, 2, size=(size, diff.size), dtype=np.int8) * 2 - 1
        means = np.abs(signs @ diff) / diff.size
        at_least += int(np.count_nonzero(means >= observed - tolerance))
        done += size
    return (at_least + 1) / (n_resamples + 1)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p-value (scipy); NaN with fewer than 2 pairs.

    Constant differences have no variance: p is 1.0 when they are all 0, else 0.0 (t is infinite).
    """
    from scipy import stats

    diff = _differences(a, b)
    if diff.size < 2:
        return float("nan")
    if np.all(diff == diff[0]):
        return 1.0 if diff[0] == 0 else 0.0
    return float(stats.ttest_rel(b, a).pvalue)


@dataclass
class Comparison:
    """System b against system a on one measure: delta = mean_b - mean_a, with both tests' p-values."""

    measure: str
    n: int
    mean_a: float
    mean_b: float
    delta: float
    p_randomization: float
    p_ttest: float


def compare(
    per_query_a: Mapping[str, Mapping[str, float]],
    per_query_b: Mapping[str, Mapping[str, float]],
    measure: str,
    *,
    n_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
    """Compare two `EvalResult.per_query` tables on `measure` (e.g. "nDCG@10"; aliases like "RR@10" accepted).

    Pass the baseline as a. Both must cover the same queries (evaluate with `complete=True` when a system
    may miss some), otherwise ValueError.
    """
    if set(per_query_a) != set(per_query_b):
        only_a, only_b = set(per_query_a) - set(per_query_b), set(per_query_b) - set(per_query_a)
        raise ValueError(
            f"systems were evaluated on different queries ({len(only_a)} only in a, "
            f"{len(only_b)} only in b); evaluate both with complete=True"
        )
    measure = str(parse_measure(measure))
    qids = list(per_query_a)
    if not qids:
        raise ValueError("no queries to compare")
    try:
        a = [per_query_a[q][measure] for q in qids]
        b = [per_query_b[q][measure] for q in qids]
    except KeyError:
        raise ValueError(f"measure {measure!r} is missing from the per-query scores") from None
    mean_a, mean_b = float(np.mean(a)), float(np.mean(b))
    return Comparison(
        measure,
        len(qids),
        mean_a,
        mean_b,
        mean_b - mean_a,
        paired_randomization_test(a, b, n_resamples=n_resamples, seed=seed),
        paired_t_test(a, b),
    )
