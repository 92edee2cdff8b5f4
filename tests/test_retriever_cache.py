"""EmbeddingCache: round trips, fingerprint isolation, many processes, and degrading to no cache on bad files."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from twostage.indexes.documents import text_hash
from twostage.retriever.cache import EmbeddingCache, default_cache_path

REPO = Path(__file__).resolve().parents[1]


def vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_default_path_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TWOSTAGE_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "embeddings.sqlite"
    assert EmbeddingCache().path == tmp_path / "embeddings.sqlite"
    monkeypatch.delenv("TWOSTAGE_CACHE_DIR")
    assert default_cache_path() == Path.home() / ".cache" / "twostage" / "embeddings.sqlite"


def test_round_trip_is_exact_and_chunked(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "sub" / "e.sqlite")
    hashes = [text_hash(f"text {i}") for i in range(1203)]  # > 2 chunks of the IN query
    vecs = vectors(len(hashes))
    cache.put_many("fp-a", hashes, vecs)
    assert (tmp_path / "sub" / "e.sqlite").is_file()
    got = cache.get_many("fp-a", hashes + ["not-there"])
    assert len(got) == len(hashes) and "not-there" not in got
    np.testing.assert_array_equal(np.stack([got[h] for h in hashes]), vecs)
    assert got[hashes[0]].dtype == np.float32
    assert cache.count("fp-a") == len(hashes)


def test_other_fingerprint_does_not_hit(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    hashes = [text_hash("a"), text_hash("b")]
    cache.put_many("fp-a", hashes, vectors(2))
    assert cache.get_many("fp-b", hashes) == {}
    assert len(cache.get_many("fp-a", hashes)) == 2


def test_persists_across_instances_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    with EmbeddingCache(path) as cache:
        cache.put_many("fp", ["h"], vectors(1, seed=1))
        cache.put_many("fp", ["h"], vectors(1, seed=2))
    got = EmbeddingCache(path).get_many("fp", ["h"])
    np.testing.assert_array_equal(got["h"], vectors(1, seed=2)[0])


def test_put_many_checks_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        EmbeddingCache(tmp_path / "e.sqlite").put_many("fp", ["a", "b"], vectors(1))


WRITER = """
import sys, numpy as np
from twostage.retriever.cache import EmbeddingCache
cache = EmbeddingCache(sys.argv[1])
worker = int(sys.argv[2])
for batch in range(20):
    hashes = [f"{worker}-{batch}-{i}" for i in range(25)]
    cache.put_many("fp", hashes, np.full((25, 4), worker, dtype=np.float32))
"""


def test_concurrent_processes_write_safely(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)], cwd=REPO, stderr=subprocess.PIPE)
        for w in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert b"Warning" not in err, err.decode()
    cache = EmbeddingCache(path)
    assert cache.count("fp") == 3 * 20 * 25
    assert cache.get_many("fp", ["2-19-24"])["2-19-24"].tolist() == [2.0] * 4


def test_corrupted_file_degrades_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    path.write_bytes(b"this is not a sqlite database" * 100)
    cache = EmbeddingCache(path)
    with pytest.warns(RuntimeWarning, match="unusable") as record:
        assert cache.get_many("fp", ["a"]) == {}
        cache.put_many("fp", ["a"], vectors(1))
        assert cache.get_many("fp", ["a"]) == {}
    assert len(record) == 1
    assert cache.enabled is False


def test_unwritable_location_degrades(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    cache = EmbeddingCache(blocker / "e.sqlite")
    with pytest.warns(RuntimeWarning):
        cache.put_many("fp", ["a"], vectors(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get_many("fp", ["a"]) == {}
        assert cache.count() == 0
