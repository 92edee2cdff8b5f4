"""VectorIndex on random unit vectors: add/search/remove/save/load on every index type, filters, lazy training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twostage.indexes.errors import CollectionError
from twostage.indexes.vector_index import VectorIndex, resolve_factory

DIM = 32
N = 5000


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Ids deliberately not 0..n-1 (sparse, large) to catch any position/id mix-up."""
    return np.arange(N, dtype=np.int64) * 7 + 1_000_000, unit_vectors(N)


# (index type, exact search?)  IVF16 uses nprobe 16 = every list, PQ is exhaustive: complete result sets.
TYPES = [
    ("flat", True),
    ("hnsw", False),
    ("IVF16,PQ8", False),
    ("IVF16,Flat", True),
    ("ivfpq", True),  # nlist 1265 needs 49k vectors to train: 5000 stay in the exact buffer
    ("PQ8", False),  # no selector support in FAISS: exercises the post-filter fallback
    ("HNSW16,Flat", False),
]


@pytest.mark.parametrize("index_type, exact", TYPES, ids=[t for t, _ in TYPES])
def test_add_search_remove_save_load(tmp_path, data, index_type, exact):
    ids, vectors = data
    index = VectorIndex.create(DIM, index_type)
    index.add(ids[:1000], vectors[:1000])
    index.add(ids[1000:], vectors[1000:])
    assert len(index) == N and index.dimension == DIM
    assert index.is_trained == (index_type != "ivfpq")

    queries = vectors[:50]
    _, found = index.search(queries, 10)
    recall_at_10 = np.mean([ids[q] in found[q] for q in range(50)])
    assert recall_at_10 >= (1.0 if exact else 0.8)

    dead = ids[::3]
    assert index.remove(dead) == len(dead)
    assert index.remove(dead[:5]) == 0  # already gone
    live = np.setdiff1d(ids, dead)
    assert len(index) == len(live)

    # k far beyond the size: clamped, every live id once, never a deleted one
    scores, found = index.search(queries[:3], 10 * N)
    assert found.shape == (3, len(live))
    for row, score_row in zip(found, scores):
        got = row[row >= 0]
        assert not np.isin(got, dead).any()
        assert len(set(got.tolist())) == len(got)
        assert len(got) >= (len(live) if exact else 0.99 * len(live))
        assert np.all(np.diff(score_row[row >= 0]) <= 1e-6)  # best first
    for hits in index.search_lists(queries, 20):
        assert len(hits) == 20 and not np.isin([i for i, _ in hits], dead).any()

    # a metadata-style filter: only allowed ids come back (deleted ones stay out even when allowed)
    allowed = ids[:300]
    for hits in index.search_lists(queries[:5], 50, allowed_ids=allowed):
        got = [i for i, _ in hits]
        assert set(got) <= set(allowed.tolist()) - set(dead.tolist())
        assert len(got) >= (50 if exact else 40)

    path = tmp_path / "vectors.faiss"
    index.save(path, generation=7)
    loaded = VectorIndex.load(path)
    assert (loaded.generation, len(loaded), loaded.factory, loaded.is_trained) == (
        7,
        len(index),
        index.factory,
        index.is_trained,
    )
    assert loaded.tombstone_count == index.tombstone_count
    if exact:
        np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    _, found = loaded.search(queries[:3], 10 * N)
    assert not np.isin(found, dead).any()


def test_auto_resolution():
    assert resolve_factory(384, "auto") == "Flat"
    assert resolve_factory(384, "auto", 99_999) == "Flat"
    assert resolve_factory(384, "auto", 100_000) == "HNSW32"
    assert resolve_factory(384, "auto", 4_000_000) == "IVF8000,PQ64"
    assert resolve_factory(768, "ivfpq", 1_000_000) == "IVF4000,PQ64"
    assert resolve_factory(32, "ivfpq", 10_000) == "IVF400,PQ16"
    assert resolve_factory(32, "IVF16,PQ8") == "IVF16,PQ8"
    hnsw = VectorIndex.create(16, "auto", expected_size=500_000)
    assert (hnsw.index_type, hnsw.factory, hnsw.ef_search) == ("auto", "HNSW32", 128)
    with pytest.raises(ValueError, match="unknown index type 'Nope7'"):
        VectorIndex.create(16, "Nope7")


def test_hnsw_tombstones_and_compact(tmp_path, data):
    ids, vectors = data[0][:2000], data[1][:2000]
    index = VectorIndex.create(DIM, "hnsw")
    index.add(ids, vectors)
    index.remove(ids[:500])
    assert index.uses_tombstones and index.tombstone_count == 500
    assert index.tombstone_ratio == pytest.approx(0.25)
    with pytest.raises(ValueError, match="cannot be added again"):
        index.add(ids[:1], vectors[:1])
    index.save(tmp_path / "v.faiss")
    sidecar = json.loads((tmp_path / "v.faiss.json").read_text())
    assert len(sidecar["tombstones"]) == 500
    assert VectorIndex.load(tmp_path / "v.faiss").tombstone_count == 500

    index.compact([(ids[500:1000], vectors[500:1000]), (ids[1000:], vectors[1000:])])
    assert index.tombstone_count == 0 and len(index) == 1500
    _, found = index.search(vectors[:10], 3000)
    assert not np.isin(found, ids[:500]).any()
    index.add(ids[:1], vectors[:1])  # allowed again once compacted away
    assert len(index) == 1501


def test_lazy_training_and_retrain(data):
    ids, vectors = data
    index = VectorIndex.create(DIM, "IVF16,Flat")
    assert index.min_train == 624 and not index.is_trained
    index.add(ids[:300], vectors[:300])
    assert not index.is_trained
    hits = index.search_lists(vectors[:3], 1)
    assert [h[0][0] for h in hits] == ids[:3].tolist()  # exact while buffered
    index.remove(ids[:10])
    index.add(ids[300:700], vectors[300:700])
    assert index.is_trained and len(index) == 690

    small = VectorIndex.create(DIM, "IVF16,Flat")
    small.add(ids[:300], vectors[:300])
    small.retrain([(ids[:300], vectors[:300])])  # below min_train, above FAISS's hard minimum
    assert small.is_trained and len(small) == 300
    with pytest.raises(ValueError, match="too few"):
        VectorIndex.create(DIM, "IVF16,Flat").retrain([(ids[:100], vectors[:100])])


def test_edge_cases(tmp_path):
    index = VectorIndex.create(DIM, "flat")
    scores, found = index.search(unit_vectors(2), 5)
    assert scores.shape == found.shape == (2, 0)
    assert index.search_lists(unit_vectors(2), 5) == [[], []]
    index.add(np.array([5, 9]), unit_vectors(2))
    assert index.search_lists(unit_vectors(1, seed=3), 10, allowed_ids=np.array([42])) == [[]]
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1]), unit_vectors(1, dim=8))
    with pytest.raises(ValueError, match="k must be"):
        index.search(unit_vectors(1), 0)
    with pytest.raises(ValueError, match="non-negative"):
        index.add(np.array([-1]), unit_vectors(1))
    (tmp_path / "bad.faiss").write_bytes(b"garbage")
    (tmp_path / "bad.faiss.json").write_text(json.dumps({"dimension": DIM, "factory": "Flat", "ntotal": 0}))
    with pytest.raises(CollectionError, match="cannot read FAISS index"):
        VectorIndex.load(tmp_path / "bad.faiss")
    index.save(tmp_path / "v.faiss")
    (tmp_path / "v.faiss.json").write_text(json.dumps({"dimension": DIM, "factory": "Flat", "ntotal": 99}))
    with pytest.raises(CollectionError, match="does not match"):
        VectorIndex.load(tmp_path / "v.faiss")


@pytest.mark.parametrize(
    "factory, lossy",
    [
        ("Flat", False),
        ("HNSW16", False),
        ("IVF16,Flat", False),
        ("IVF16,PQ8", True),
        ("PQ8", True),
        ("SQ8", True),
        ("HNSW16,PQ8", True),
    ],
)
def test_is_lossy(factory, lossy):
    assert VectorIndex.create(DIM, factory).is_lossy == lossy


def test_exact_rescore_of_lossy_index(data):
    """PQ codes rank approximately; re-scoring REFINE_FACTOR x k candidates with the exact vectors recovers the true
    top-k (nearly) and returns exact inner products, also under a selector and with tombstoned (removed) ids."""
    from twostage.indexes.vector_index import REFINE_FACTOR

    ids, vectors = data
    position = {int(i): n for n, i in enumerate(ids)}
    calls = []

    def exact(wanted: np.ndarray) -> np.ndarray:
        calls.append(len(wanted))
        return vectors[[position[int(i)] for i in wanted]]

    index = VectorIndex.create(DIM, "IVF16,PQ8")  # 8 bytes for 32 floats: coarse (codes alone find about half)
    index.add(ids, vectors)
    queries = unit_vectors(40, seed=3)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(f) & set(ids[t])) / 10 for f, t in zip(found, truth)]))

    _, coarse = index.search(queries, 10)
    scores, refined = index.search(queries, 10, exact=exact)
    assert calls and max(calls) <= REFINE_FACTOR * 10 * len(queries)
    assert recall(coarse) < 0.7 and recall(refined) >= 0.85
    expected = np.array([[vectors[position[int(i)]] @ q for i in row] for q, row in zip(queries, refined)])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first

    allowed = ids[::2]
    _, found = index.search(queries, 10, allowed_ids=allowed, exact=exact)
    assert set(found.ravel()) <= set(allowed)
    index.remove(ids[:2500])
    _, found = index.search(queries, 10, exact=exact)
    assert not set(found.ravel()) & set(ids[:2500]) and (found >= 0).all()

    flat = VectorIndex.create(DIM, "flat")
    flat.add(ids, vectors)
    calls.clear()
    flat.search(queries, 10, exact=exact)
    assert calls == []  # exact indexes are never re-scored


def test_search_effort_overrides(data):
    """ef_search / nprobe change one search's effort (more effort, more recall), not the index's own settings."""
    ids, vectors = data
    queries = unit_vectors(100, seed=5)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(f) & set(ids[t])) / 10 for f, t in zip(found, truth)]))

    ivf = VectorIndex.create(DIM, "IVF64,Flat")
    ivf.add(ids, vectors)
    assert ivf.nprobe == 16
    one, every = recall(ivf.search(queries, 10, nprobe=1)[1]), recall(ivf.search(queries, 10, nprobe=64)[1])
    assert one < 0.6 and every == 1.0 and ivf.nprobe == 16
    assert recall(ivf.search(queries, 10, nprobe=10_000)[1]) == 1.0  # clamped to nlist

    hnsw = VectorIndex.create(DIM, "HNSW4")  # a sparse graph, so that effort shows on 32-d random points
    hnsw.add(ids, vectors)
    assert recall(hnsw.search(queries, 10, ef_search=10)[1]) < recall(hnsw.search(queries, 10, ef_search=500)[1])
    assert hnsw.ef_search == 128
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="must be a positive integer"):
            ivf.search(queries, 10, nprobe=bad)
