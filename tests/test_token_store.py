"""Stored MaxSim token vectors: compact and exact enough, never stale, atomic with their documents, used at query time."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from twostage import Engine, UsageError
from twostage.cli import main
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.token_store import TokenStore
from twostage.reranker.maxsim import MaxSimReranker, encode_with_tokens

DIM = 8
CITIES = [
    Document("b1", "Berlin has a population of about 3.7 million registered inhabitants."),
    Document("b2", "Around 3.8 million people live in Berlin, the largest city in Germany."),
    Document("m1", "Berlin's Museum Island holds five world-famous museums."),
    Document("p1", "Paris has about 2.1 million inhabitants within its city limits."),
    Document("x1", "A sourdough starter is a fermented mixture of flour and water."),
]


def unit_tokens(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def test_roundtrip_float16_exact_int8_within_half_a_step(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [unit_tokens(rng, n, 384) for n in (1, 7, 60)]
    ids = ["a", "b", "c"]
    exact = TokenStore.open(tmp_path / "fp16.sqlite", encoding="float16")
    small = TokenStore.open(tmp_path / "int8.sqlite", encoding="int8")
    for store in (exact, small):
        store.put_many(ids, arrays)
    for array, got in zip(arrays, exact.get_many(ids)):
        assert got.dtype == np.float16 and np.array_equal(got, array)
    for array, got in zip(arrays, small.get_many(ids)):
        x = array.astype(np.float32)
        step = np.abs(x).max(axis=1, keepdims=True) / 127
        assert got.shape == array.shape and np.all(np.abs(got - x) <= step / 2 + 1e-7)
        cosine = (got * x).sum(1) / np.linalg.norm(got, axis=1)
        assert cosine.min() > 0.9995
    tokens = sum(len(a) for a in arrays)
    assert exact.bytes_per_passage() == tokens * 384 * 2 / 3
    assert small.bytes_per_passage() == tokens * (384 + 4) / 3  # half of float16, plus one scale per token
    assert small.get("nope") is None and [a is None for a in small.get_many(["c", "nope", "c"])] == [False, True, False]
    small.put_many(["a"], [arrays[2]])  # replace
    assert small.get("a").shape == arrays[2].shape and len(small) == 3
    small.delete(["a", "nope"])
    assert small.get("a") is None and sorted(small.doc_ids()) == ["b", "c"]
    for bad in (np.zeros((0, 4)), np.zeros(4), np.full((2, 4), np.nan)):
        with pytest.raises(ValueError):
            small.put_many(["z"], [bad])
    exact.close()
    small.close()


def make_collection(path: Path) -> Collection:
    return Collection.create(
        path, model_name="m", model_fingerprint="f", dimension=DIM, index_type="flat", store_tokens="int8"
    )


def vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_tokens_of_replaced_and_deleted_documents_are_gone(tmp_path):
    rng = np.random.default_rng(1)
    docs = [Document(f"d{i}", f"text {i}") for i in range(3)]
    with make_collection(tmp_path / "c") as collection:
        collection.upsert(docs, vectors(3), tokens=[unit_tokens(rng, 4) for _ in docs])
        assert all(a is not None for a in collection.token_store.get_many(["d0", "d1", "d2"]))
        collection.upsert([Document("d0", "new text")], vectors(1, 1))  # replaced without tokens: old ones dropped
        new = unit_tokens(rng, 2)
        collection.upsert([Document("d1", "newer text")], vectors(1, 2), tokens=[new])
        collection.delete(["d2"])
        store = collection.token_store
        assert store.get("d0") is None and store.get("d2") is None
        assert store.get("d1").shape == (2, DIM)
        stats = collection.stats()
        assert stats["extra"]["token_store"] == {"encoding": "int8"} and stats["token_passages"] == 1
        assert stats["token_bytes_per_passage"] == 2 * (DIM + 4)
    with Collection.open(tmp_path / "c") as reopened:  # the manifest brings the store back
        assert reopened.token_store is not None and list(reopened.token_store.doc_ids()) == ["d1"]
    with Collection.create(tmp_path / "plain", model_name="m", model_fingerprint="f", dimension=DIM) as plain:
        assert plain.token_store is None and "token_bytes_per_passage" not in plain.stats()


def test_tokens_commit_in_the_documents_transaction(tmp_path, monkeypatch):
    """A failure writing tokens rolls the documents back too: no document is ever left with another version's tokens."""
    rng = np.random.default_rng(2)
    old = unit_tokens(rng, 3)
    with make_collection(tmp_path / "c") as collection:
        collection.upsert([Document("d0", "old")], vectors(1), tokens=[old])

        def fail(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(collection.token_store, "put_many", fail)
        with pytest.raises(OSError):
            collection.upsert([Document("d0", "new"), Document("d1", "other")], vectors(2), tokens=[old, old])
        assert [d.text if d else None for d in collection.get(["d0", "d1"])] == ["old", None]
        np.testing.assert_allclose(collection.token_store.get("d0"), old, atol=0.01)


CRASH_WRITER = """
import sys, numpy as np
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
c = Collection.open(sys.argv[1])
for step in range(100000):
    version = float(step % 50 + 1)
    docs = [Document(f"d{i}", f"v{version}") for i in range(20)]
    c.upsert(docs, np.ones((20, 8), np.float32) / 8 ** 0.5, tokens=[np.full((2, 8), version / 64, np.float16)] * 20)
    if step == 0:
        print("ready", flush=True)
"""


def test_kill_9_never_leaves_tokens_of_another_version(tmp_path):
    with make_collection(tmp_path / "c"):
        pass
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, str(tmp_path / "c")], env=env, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Collection.open(tmp_path / "c") as collection:
        ids = [f"d{i}" for i in range(20)]
        for doc, tokens in zip(collection.get(ids), collection.token_store.get_many(ids)):
            version = float(doc.text[1:])
            np.testing.assert_allclose(tokens, version / 64, rtol=0.01)


@pytest.fixture()
def count_passage_encodes(minilm, monkeypatch):
    """Texts of ``CITIES`` that the bi-encoder's model was asked to encode (queries are not counted)."""
    seen: list[str] = []
    original = minilm.model.encode
    passages = {d.text for d in CITIES}

    def encode(*args, **kwargs):
        texts = args[0] if args else kwargs.get("inputs", kwargs.get("sentences"))
        seen.extend(t for t in ([texts] if isinstance(texts, str) else texts) if t in passages)
        return original(*args, **kwargs)

    monkeypatch.setattr(minilm.model, "encode", encode)
    return seen


def test_stored_tokens_score_like_on_the_fly_and_no_passage_is_encoded(tmp_path, minilm, count_passage_encodes):
    queries = ["How many people live in Berlin?", "museums in berlin"]
    with Engine.create(
        tmp_path / "c", encoder=minilm, reranker="maxsim", index_type="flat", store_tokens=True, token_pool=1
    ) as engine:  # unpooled: the same vectors as on the fly
        engine.add(CITIES)
        assert len(count_passage_encodes) == len(CITIES)  # one pass at index time gives vectors and tokens
        count_passage_encodes.clear()
        raw = {"prf": "none", "query_tokens": "plain", "fusion": "none"}  # MaxSim's own scores, no default levers
        stored = engine.search_many(queries, k=5, top_n=5, **raw)
        assert count_passage_encodes == [] and stored[0].reranker == "maxsim"
        assert engine.search(queries[0], k=5).hits[0].doc_id in {"b1", "b2"}
        assert count_passage_encodes == []
        fly = Engine(engine.collection, minilm, MaxSimReranker(minilm)).search_many(queries, k=5, top_n=5, **raw)
        assert len(count_passage_encodes) == 2 * len(CITIES)
        for a, b in zip(stored, fly):
            scores_a = {h.doc_id: h.rerank_score for h in a.hits}
            scores_b = {h.doc_id: h.rerank_score for h in b.hits}
            assert scores_a.keys() == scores_b.keys()
            assert max(abs(scores_a[d] - scores_b[d]) for d in scores_a) < 0.01  # int8 tolerance, ~8 query tokens
        # vectors from the one-pass encode are the ones encode_documents makes
        texts = [d.text_for_encoding() for d in CITIES]
        dense, tokens = encode_with_tokens(minilm, texts)
        np.testing.assert_allclose(dense, minilm.encode_documents(texts).embeddings, atol=1e-5)
        assert [t.dtype for t in tokens] == [np.float16] * len(CITIES)


def test_resuming_a_collection_without_tokens_with_store_tokens_is_refused(tmp_path, minilm):
    Engine.create(tmp_path / "c", encoder=minilm, reranker=None).close()
    with pytest.raises(UsageError, match="without token storage"):
        Engine.create(tmp_path / "c", encoder=minilm, reranker=None, store_tokens=True)


def twostage(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def offline_collection(tmp_path, monkeypatch, tiny_bi_encoder_dir) -> Path:
    """A --store-tokens collection built with the tiny bi-encoder, offline, with an empty Hugging Face cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in CITIES), encoding="utf-8")
    directory = tmp_path / "c"
    code, out, err = twostage(
        "index", str(corpus), "-i", str(directory), "--model", str(tiny_bi_encoder_dir), "--store-tokens", "-q"
    )
    assert code == 0, err
    return directory


def test_offline_default_reranker_falls_back_to_maxsim_in_one_line(offline_collection):
    code, out, err = twostage(
        "search", str(offline_collection), "how many people live in berlin", "--candidate-depth", "5"
    )
    assert code == 0, err
    notices = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]  # transformers' bar
    assert len(notices) == 1 and "maxsim" in notices[0].lower() and "not available offline" in notices[0], err
    assert "reranked by maxsim" in out
    code, out, err = twostage("info", str(offline_collection), "--json")
    assert json.loads(out)["token_passages"] == len(CITIES)


def test_explicit_reranker_that_cannot_load_stays_an_error(offline_collection):
    code, out, err = twostage("search", str(offline_collection), "berlin", "--reranker", "some/missing-model")
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1 and "some/missing-model" in lines[0] and lines[0].startswith("twostage search: error:")
    assert "instead" not in err  # no fallback for a reranker the user named
