"""Token pooling (indexes/token_pooling.py): counts, merges, the store's record of it, conversion and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_residual_tokens import QUERIES, _Candidate, twostage, unit

from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.errors import CollectionError
from twostage.indexes.token_pooling import check_factor, pool_tokens, pooled_count
from twostage.indexes.token_store import TokenStore
from twostage.reranker.maxsim import MaxSimReranker


def test_pooling_keeps_floor_n_over_factor_unit_vectors_and_merges_duplicates_first():
    rng = np.random.default_rng(0)
    distinct = unit(rng, 5, 16)
    doubled = np.concatenate([distinct, distinct + 1e-4])  # each vector twice, nearly exactly
    pooled = pool_tokens(doubled, 2)
    assert pooled.shape == (5, 16) and pooled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(pooled, distinct, atol=1e-3)  # the pairs merged, in passage order
    assert [pooled_count(n, 2.5) for n in (1, 2, 3, 5, 6, 81)] == [1, 1, 1, 2, 2, 32]
    assert len(pool_tokens(unit(rng, 81, 16), 2.5)) == 32
    same = unit(rng, 7, 16)
    assert pool_tokens(same, 1) is not None and np.array_equal(pool_tokens(same, 1), same)
    for bad in (0.5, 0, -2, 17, float("nan"), "two"):
        with pytest.raises(ValueError, match="token pool factor"):
            check_factor(bad)


def test_pooling_groups_as_scipys_own_ward_clustering_does():
    """The Gram-matrix distances and the pointer-jumping cut give scipy's groups: Ward's linkage of the vectors
    themselves cut by ``fcluster(maxclust)``, each group's unit mean, groups in order of their first token."""
    from scipy.cluster.hierarchy import fcluster, linkage

    rng = np.random.default_rng(5)
    for n in rng.integers(2, 160, 40):
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
        for factor in (1.5, 2.5, 4.0):
            k = pooled_count(int(n), factor)
            if k >= n:
                continue
            unit_rows = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            labels = fcluster(linkage(unit_rows.astype(np.float64), method="ward"), t=k, criterion="maxclust")
            groups = sorted(set(labels), key=lambda g: int(np.argmax(labels == g)))
            means = np.stack([unit_rows[labels == g].mean(axis=0) for g in groups])
            expected = means / np.linalg.norm(means, axis=1, keepdims=True)
            np.testing.assert_allclose(pool_tokens(vectors, factor), expected, atol=1e-5)


def test_a_pooling_store_records_its_factor_and_pools_every_write(tmp_path):
    rng = np.random.default_rng(1)
    ids, arrays = [f"d{i}" for i in range(40)], [unit(rng, 30, 16) for _ in range(40)]
    store = TokenStore.open(tmp_path / "t.sqlite", encoding="2bit", pool=3)
    store.put_many(ids, arrays)
    assert store.stats().tokens == 40 * 10
    assert not store.train_pending()  # 400 pooled tokens < MIN_TRAIN: int8 until more come
    store.put_many([f"e{i}" for i in range(80)], [unit(rng, 30, 16) for _ in range(80)])
    assert store.train_pending() and store.codec is not None and store.stats().tokens == 120 * 10
    store.close()
    again = TokenStore.open(tmp_path / "t.sqlite", encoding="2bit")  # the file's record wins over the argument
    assert again.pool == 3 and again.stats().tokens_per_passage == 10
    again.put_many(["new"], [unit(rng, 14, 16)])
    assert len(again.get("new")) == 4
    again.close()


def test_conversion_pools_an_unpooled_store_once_and_refuses_to_pool_again(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    docs = [Document(f"d{i}", f"text {i}") for i in range(60)]
    tokens = [unit(rng, 40, 16) for _ in docs]
    with Collection.create(
        tmp_path / "c", model_name="m", model_fingerprint="f", dimension=8, index_type="flat", store_tokens="int8"
    ) as collection:
        collection.upsert(docs, unit(rng, len(docs), 8), tokens=tokens)
        collection.commit()
        store = collection.token_store

        def fail(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr("twostage.indexes.token_store._write", fail)
        with pytest.raises(OSError):
            collection.convert_tokens("2bit", pool=2)
        assert (store.encoding, store.pool, store.stats().tokens) == ("int8", 1.0, 60 * 40)  # as it was
        monkeypatch.undo()
        collection.convert_tokens("2bit", pool=2)
        assert (store.encoding, store.pool, store.stats().tokens) == ("2bit", 2.0, 60 * 20)
        assert store.codec is not None and store.bytes_per_passage() == 20 * (2 + 16 * 2 // 8)
        manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
        assert manifest["extra"]["token_store"] == {"encoding": "2bit", "pool": 2.0}
        collection.convert_tokens("pq")  # re-encoding alone keeps the pooling
        assert (store.encoding, store.pool, store.stats().tokens) == ("pq", 2.0, 60 * 20)
        with pytest.raises(CollectionError, match="already pooled by 2"):
            collection.convert_tokens("2bit", pool=4)
        assert store.stats().tokens == 60 * 20 and collection.stats()["token_pool"] == 2.0
    with Collection.open(tmp_path / "c") as reopened:
        assert reopened.token_store.pool == 2.0 and reopened.token_store.encoding == "pq"


def test_the_cli_pools_at_index_time_and_on_conversion_and_refuses_bad_factors(tmp_path):
    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus.jsonl"
    code, out, err = twostage(
        "index", str(corpus), "--index", str(tmp_path / "p"), "--store-tokens", "2bit", "--token-pool", "2", "-q"
    )
    assert code == 0, err
    code, out, err = twostage("tokens", str(tmp_path / "p"))
    assert code == 0 and "2bit tokens pooled by 2, 100 passages" in out
    code, out, err = twostage("search", str(tmp_path / "p"), "How many people live in Berlin?", "--json")
    assert code == 0 and json.loads(out)["hits"][0]["doc_id"] == "cities-01"
    code, out, err = twostage(
        "index", str(corpus), "--index", str(tmp_path / "p"), "--store-tokens", "2bit", "--token-pool", "3", "-q"
    )
    assert code == 2 and "pools its tokens by 2, not 3" in err.strip().splitlines()[-1]  # after "resuming"
    code, out, err = twostage("index", str(corpus), "--index", str(tmp_path / "p"), "--store-tokens", "int8", "-q")
    assert code == 2 and "stores 2bit tokens, not int8; convert them with" in err.strip().splitlines()[-1]
    code, out, err = twostage("index", str(corpus), "--index", str(tmp_path / "q"), "--token-pool", "2", "-q")
    assert code == 2 and "give --store-tokens too" in err and not (tmp_path / "q").exists()
    code, out, err = twostage("tokens", str(tmp_path / "p"), "--pool", "2")
    assert code == 2 and "give --convert" in err
    code, out, err = twostage("tokens", str(tmp_path / "p"), "--convert", "2bit", "--pool", "3")
    assert code == 2 and "already pooled by 2" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error, status 2
        twostage("index", str(corpus), "--index", str(tmp_path / "r"), "--store-tokens", "--token-pool", "0.5")
    assert exit_.value.code == 2


def test_pooled_tokens_keep_maxsim_rankings_close_on_real_passages(tmp_path, minilm, example_tokens):
    """Pooled 2bit tokens of real MiniLM passages: half the vectors, each query's best passage still in the top 3."""
    ids, tokens = example_tokens
    full = TokenStore.open(tmp_path / "full.sqlite", encoding="float16")
    pooled = TokenStore.open(tmp_path / "pooled.sqlite", encoding="2bit", pool=2)
    for store in (full, pooled):
        store.put_many(ids, tokens)
    assert pooled.train_pending()
    assert pooled.stats().tokens == sum(pooled_count(len(t), 2) for t in tokens)
    candidates = [[_Candidate(i) for i in ids]] * len(QUERIES)
    reranker, scores = MaxSimReranker(minilm), {}
    for name, store in (("full", full), ("pooled", pooled)):
        reranker.token_store = store.get_many
        scores[name] = np.stack(reranker.score_candidates(QUERIES, candidates))
    for q in range(len(QUERIES)):
        assert np.argmax(scores["full"][q]) in np.argsort(-scores["pooled"][q])[:3], QUERIES[q]
    full.close()
    pooled.close()


def test_a_new_2bit_collection_pools_by_default_and_the_others_do_not(tmp_path):
    made = {}
    for name, tokens, pool in (
        ("default", True, None),
        ("int8", "int8", None),
        ("unpooled", "2bit", 1),
        ("pq", "pq", 3),
    ):
        with Collection.create(
            tmp_path / name, model_name="m", model_fingerprint="f", dimension=8, store_tokens=tokens, token_pool=pool
        ) as collection:
            made[name] = collection.token_store.pool
            collection.commit()
    assert made == {"default": 2.5, "int8": 1.0, "unpooled": 1.0, "pq": 3.0}
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text())
    assert manifest["extra"]["token_store"] == {"encoding": "2bit", "pool": 2.5}
    with pytest.raises(CollectionError, match="needs stored tokens"):
        Collection.create(tmp_path / "none", model_name="m", model_fingerprint="f", dimension=8, token_pool=2)
    with pytest.raises(CollectionError, match="token pool factor"):
        Collection.create(
            tmp_path / "bad", model_name="m", model_fingerprint="f", dimension=8, store_tokens=True, token_pool=0.5
        )


def test_a_sharded_collection_pools_every_shard_and_refuses_another_factor_on_resume(tmp_path, tiny_bi_encoder_dir):
    from twostage.engine import Engine
    from twostage.errors import UsageError
    from twostage.retriever.biencoder import BiEncoder

    tiny_encoder = BiEncoder(str(tiny_bi_encoder_dir))
    docs = [Document(f"d{i}", f"passage {i} about topic {i % 5} with a few more words") for i in range(20)]
    with Engine.create(
        tmp_path / "s", encoder=tiny_encoder, reranker=None, store_tokens="int8", token_pool=2, shards=2
    ) as engine:
        engine.add(docs)
        assert engine.collection.token_store.pool == 2.0
        assert {shard.token_store.pool for shard in engine.collection.shards} == {2.0}
    with pytest.raises(UsageError, match="pools its tokens by 2, not 3"):
        Engine.create(tmp_path / "s", encoder=tiny_encoder, reranker=None, store_tokens="int8", token_pool=3, shards=2)
    Engine.create(tmp_path / "s", encoder=tiny_encoder, reranker=None, store_tokens="int8", shards=2).close()
