"""Token pooling (Clavié et al., 2024, "Reducing the footprint of multi-vector retrieval ... via token pooling"):
a passage's token vectors clustered into ``floor(n / factor)`` groups (at least one), each kept as its group's
unit-length mean.

MaxSim reads, per query token, only the best-matching passage token, so near-duplicate passage tokens add bytes and
little score; merging them stores ``factor`` times fewer vectors. The clustering is Ward's hierarchical clustering
(``scipy.cluster.hierarchy``), as in the paper: deterministic, and cheap beside encoding the passage
(docs/benchmarks/indexing.md).
"""

from __future__ import annotations

import math
from functools import lru_cache

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
    # Ward's linkage of the pairwise distances, taken from one Gram matrix (|a - b|^2 = 2 - 2 a.b for unit vectors):
    # with numpy's BLAS on one thread, as a write holds it (runtime/blas.py), faster than scipy's pair-by-pair loop,
    # and the same groups (tests/test_token_pooling.py)
    as64 = unit.astype(np.float64)
    rows, cols = _upper_triangle(n)
    distances = np.sqrt(np.maximum(2.0 - 2.0 * (as64 @ as64.T)[rows, cols], 0.0))
    labels = _first_merges(linkage(distances, method="ward"), n, k)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.intp)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))  # groups numbered in passage order
    # each group's sum as one product with its membership matrix: faster than ``np.add.reduceat`` over sorted rows at
    # a passage's sizes, on the one BLAS thread a write allows
    members = np.zeros((k, n), dtype=np.float32)
    members[rank[inverse], np.arange(n)] = 1.0
    sums = members @ unit
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@lru_cache(maxsize=512)
def _upper_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of an ``n x n`` matrix's upper triangle, in scipy's condensed-distance order."""
    return np.triu_indices(n, 1)


def _first_merges(merges: np.ndarray, n: int, k: int) -> np.ndarray:
    """Each of ``n`` points' group (a node id) after the first ``n - k`` merges of a ``linkage`` matrix: exactly
    ``k`` groups. Ward's merge heights only grow, so this is ``fcluster(..., t=k, criterion="maxclust")`` without
    its checks of the matrix, which cost more than the clustering for a passage: every merged node points at the
    node it merged into, and pointer jumping (each node's pointer replaced by its pointer's, log2 times) leads every
    point to its group's root."""
    steps = n - k
    parent = np.arange(2 * n - 1)
    made = np.arange(n, n + steps)
    parent[merges[:steps, 0].astype(np.intp)] = made
    parent[merges[:steps, 1].astype(np.intp)] = made
    for _ in range(max(1, math.ceil(math.log2(steps + 1)))):
        parent = parent[parent]
    return parent[:n]
