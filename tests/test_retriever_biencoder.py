"""BiEncoder with the real packaged all-MiniLM-L6-v2: quality sanity, ordering, truncation, cache, dense search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from retriever_fixtures import packaged_minilm, set_offline

from twostage.retriever.biencoder import BiEncoder, EncodeResult
from twostage.retriever.cache import EmbeddingCache
from twostage.runtime.models import DEFAULT_BI_ENCODER, ModelLoadError, model_fingerprint

BERLIN = "Berlin is the capital of Germany and has a population of about 3.7 million inhabitants."
UNRELATED = "The cheetah is the fastest land animal and hunts gazelles on the savanna."


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        set_offline(mp)
        yield


@pytest.fixture(scope="module")
def bi(offline) -> BiEncoder:
    """The real default model, loaded once for this module, without a cache."""
    return BiEncoder(cache=None)


def short_texts(n: int, tag: str) -> list[str]:
    return [f"{tag} passage number {i} mentions item {i * 7 % 13} and colour {i % 5}." for i in range(n)]


def test_default_model_attributes(bi: BiEncoder) -> None:
    assert bi.name == DEFAULT_BI_ENCODER
    assert bi.origin == "packaged"
    assert bi.dimension == 384
    assert bi.max_seq_length == 256
    assert bi.normalize is True
    assert bi.fingerprint == model_fingerprint(packaged_minilm())
    assert bi.fingerprint == model_fingerprint(bi.model)


def test_embeddings_unit_norm_and_semantic(bi: BiEncoder) -> None:
    result = bi.encode_documents([BERLIN, UNRELATED])
    assert isinstance(result, EncodeResult)
    assert result.embeddings.shape == (2, 384) and result.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    query = bi.encode_queries(["How many people live in Berlin?"])
    assert query.shape == (1, 384) and query.dtype == np.float32
    berlin, unrelated = (query @ result.embeddings.T)[0]
    assert berlin > unrelated + 0.3


def test_order_preserved_under_length_sorting(bi: BiEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) + f" id{i}" for i, n in enumerate(rng.integers(1, 60, size=40))]
    texts += [texts[3]]  # a duplicate is encoded once and copied
    monkeypatch.setattr(bi, "batch_size", 2)  # several chunks of the length-sorted order
    together = bi.encode_documents(texts).embeddings
    alone = np.stack([bi.encode_documents([t]).embeddings[0] for t in texts[:8]])
    np.testing.assert_allclose(together[:8], alone, atol=1e-5)
    np.testing.assert_array_equal(together[-1], together[3])
    np.testing.assert_allclose(bi.encode_queries(texts[:3]), together[:3], atol=1e-5)


def test_truncation_count(bi: BiEncoder) -> None:
    long_text = " ".join(f"word{i % 50}" for i in range(600))
    result = bi.encode_documents(["short one", long_text, "another short one"])
    assert result.truncated == 1
    assert bi.count_truncated(["short"]) == 0


def test_empty_inputs(bi: BiEncoder) -> None:
    result = bi.encode_documents([])
    assert result.embeddings.shape == (0, 384) and result.truncated == 0 and result.cache_hits == 0
    assert bi.encode_queries([]).shape == (0, 384)
    with pytest.raises(TypeError):
        bi.encode_queries("a single string")


def test_second_run_is_served_by_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh encoder over the same cache encodes nothing it has seen: counted by cache hits and model calls (a
    wall-clock ratio would flake on a loaded machine)."""
    texts = short_texts(200, "cached")
    path = tmp_path / "e.sqlite"
    first = BiEncoder(packaged_minilm(), cache=EmbeddingCache(path)).encode_documents(texts)
    assert first.cache_hits == 0

    fresh = BiEncoder(packaged_minilm(), cache=EmbeddingCache(path))
    encoded: list[int] = []
    encode = fresh.model.encode_document
    monkeypatch.setattr(
        fresh.model, "encode_document", lambda batch, **kw: encoded.append(len(batch)) or encode(batch, **kw)
    )
    second = fresh.encode_documents(texts)
    assert second.cache_hits == 200 and encoded == []
    np.testing.assert_array_equal(second.embeddings, first.embeddings)

    partial = fresh.encode_documents(texts[:50] + ["a brand new text"])
    assert partial.cache_hits == 50 and encoded == [1]
    np.testing.assert_array_equal(partial.embeddings[:50], first.embeddings[:50])


def test_cache_keyed_by_model_and_settings(tmp_path: Path, bi: BiEncoder) -> None:
    path = tmp_path / "e.sqlite"
    texts = short_texts(5, "keyed")
    BiEncoder(packaged_minilm(), cache=EmbeddingCache(path)).encode_documents(texts)

    other_settings = BiEncoder(packaged_minilm(), cache=EmbeddingCache(path), document_prompt="passage: ")
    assert other_settings.encode_documents(texts).cache_hits == 0

    changed = tmp_path / "cls-pooling"
    shutil.copytree(packaged_minilm(), changed, copy_function=_link_weights)
    pooling = json.loads((changed / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    (changed / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    other_model = BiEncoder(changed, cache=EmbeddingCache(path))
    assert other_model.origin == "local-dir" and other_model.fingerprint != bi.fingerprint
    assert other_model.encode_documents(texts).cache_hits == 0


def _link_weights(src: str, dst: str) -> None:
    if src.endswith(".safetensors"):
        Path(dst).symlink_to(src)
    else:
        shutil.copy2(src, dst)


def test_unloadable_model_raises_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError) as err:
        BiEncoder(tmp_path, cache=None)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert err.value.__suppress_context__
