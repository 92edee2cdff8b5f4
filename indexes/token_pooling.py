"""Token pooling (Clavié et al., 2024, "Reducing the footprint of multi-vector retrieval ... via token pooling"):
a passage's token vectors clustered into ``floor(n / factor)`` groups (at least one), each kept as its group's
unit-length mean.

MaxSim reads, per query token, only the best-matching passage token, so near-duplicate passage tokens add bytes and
little score; merging them stores ``factor`` times fewer vectors. The clustering is Ward's hierarchical clustering
(``scipy.cluster.hierarchy``), as in the paper: deterministic, and 1.5 ms of one core for a 76-token MS MARCO
passage (benchmarks/bench_token_pooling.py).
"""

from __future__ import annotations

import math

import numpy as np

#: the largest factor accepted (beyond it a passage keeps a handful of vectors and MaxSim turns into one dot product)
MAX_FACTOR = 16.0


def check_factor(factor: float | str) -> float:
    """``factor`` as a float in [1, MAX_FACTOR] (1 = no pooling), else ValueError naming the range."""
    try:
        value = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"token pool factor must be a number from 1 to {MAX_FACTOR:g} (got {factor!r})") from None
    if not math.isfinite(value) or not 1.0 <= value <= MAX_FACTOR:
        raise ValueError(f"token pool factor must be from 1 (no pooling) to {MAX_FACTOR:g} (got {factor!r})")
    return value


def pooled_count(n_tokens: int, factor: float) -> int:
    """How many vectors a passage of ``n_tokens`` keeps: ``floor(n / factor)``, at least 1 (the paper's rule, so a
    store's mean is at most ``n / factor`` per passage)."""
    return max(1, math.floor(n_tokens / factor + 1e-9))


def pool_tokens(vectors: np.ndarray, factor: float) -> np.ndarray:
    """``vectors`` ``(n, dim)`` merged into :func:`pooled_count` unit-length group means (float32), the groups in
    order of their first token; returned as given (float32) when ``factor`` is 1 or nothing would merge."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    k = pooled_count(n, factor)
    if k >= n:
        return vectors
    from scipy.cluster.hierarchy import linkage

    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    labels = _first_merges(linkage(unit.astype(np.float64), method="ward"), n, k)
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.argsort(labels, kind="stable")  # members of each group together, groups by label
    sums = np.add.reduceat(unit[order], np.concatenate(([0], np.cumsum(counts)[:-1])), axis=0)
    means = (sums / counts[:, None])[np.argsort(first, kind="stable")]  # groups in passage order
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _first_merges(merges: np.ndarray, n: int, k: int) -> np.ndarray:
    """Each of ``n`` points' group after the first ``n - k`` merges of a ``linkage`` matrix: exactly ``k`` groups.
    Ward's merge heights only grow, so this is ``fcluster(..., t=k, criterion="maxclust")`` without its checks of
    the matrix, which cost more than the clustering for a passage."""
    parent = list(range(2 * n - 1))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for step in range(n - k):
        left, right = int(merges[step, 0]), int(merges[step, 1])
        parent[root(left)] = parent[root(right)] = n + step
    return np.array([root(i) for i in range(n)])
