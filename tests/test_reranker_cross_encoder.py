"""CrossEncoderReranker against sentence-transformers' own CrossEncoder on a tiny random model (offline, no downloads)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

from twostage.reranker import Candidate, CrossEncoderReranker, Reranked

QUERY = "how many people live in berlin"
TEXTS = [
    "berlin has a population of about 3 million people",
    "the museum island in berlin is famous for its art collections",
    "paris is the capital of france",
    "berlin",
    "many tourists visit the river spree and the parks of berlin every summer",
    "the population of munich is about one million",
]


@pytest.fixture(scope="module")
def model_dir(tiny_cross_encoder_dir):
    """The session's tiny cross-encoder (tests/conftest.py builds it with tiny_models.build_tiny_cross_encoder)."""
    return tiny_cross_encoder_dir


@pytest.fixture(scope="module")
def library(model_dir):
    return CrossEncoder(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def reranker(model_dir):
    return CrossEncoderReranker(str(model_dir), batch_size=4)


def raw_predict(library: CrossEncoder, query: str, texts: list[str]) -> np.ndarray:
    return library.predict([(query, t) for t in texts], activation_fn=torch.nn.Identity())


def test_score_equals_library_predict(reranker, library):
    scores = reranker.score(QUERY, TEXTS)
    assert scores.shape == (len(TEXTS),) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, raw_predict(library, QUERY, TEXTS), atol=1e-5)
    assert len(set(np.round(scores, 4))) == len(TEXTS)  # the tiny model separates these texts


def test_length_sorted_batches_keep_input_order(model_dir, library):
    texts = sorted(TEXTS, key=len) + sorted(TEXTS, key=len, reverse=True)  # lengths deliberately out of order
    expected = raw_predict(library, QUERY, texts)
    for batch_size in (1, 3, 64):
        scores = CrossEncoderReranker(str(model_dir), batch_size=batch_size).score(QUERY, texts)
        np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_rerank_sorts_by_score_and_keeps_doc_ids(reranker):
    candidates = [Candidate(f"d{i}", text, score=1.0 - i / 10) for i, text in enumerate(TEXTS)]
    scores = reranker.score(QUERY, TEXTS)
    ranked = reranker.rerank(QUERY, candidates)
    assert [r.index for r in ranked] == list(np.argsort(-scores, kind="stable"))
    assert all(isinstance(r, Reranked) and r.doc_id == f"d{r.index}" for r in ranked)
    assert [r.score for r in ranked] == sorted((float(s) for s in scores), reverse=True)
    assert reranker.rerank(QUERY, candidates, top_n=2) == ranked[:2]
    assert reranker.rerank(QUERY, []) == []


def test_rank_has_library_format_and_order(reranker, library):
    ours = reranker.rank(QUERY, TEXTS, top_k=4, return_documents=True)
    theirs = library.rank(QUERY, TEXTS, top_k=4, return_documents=True, activation_fn=torch.nn.Identity())
    assert [set(row) for row in ours] == [{"corpus_id", "score", "text"}] * 4
    assert [row["corpus_id"] for row in ours] == [row["corpus_id"] for row in theirs]
    assert [row["text"] for row in ours] == [row["text"] for row in theirs]
    np.testing.assert_allclose([row["score"] for row in ours], [row["score"] for row in theirs], atol=1e-5)
    assert all(type(row["corpus_id"]) is int and type(row["score"]) is float for row in ours)
    assert [set(row) for row in reranker.rank(QUERY, TEXTS, return_documents=False)] == [{"corpus_id", "score"}] * 6


def test_rank_takes_the_library_defaults(reranker, library):
    """Called with defaults only, ``rank`` answers as ``CrossEncoder.rank`` does (no texts, every document)."""
    ours = reranker.rank(QUERY, TEXTS)
    theirs = library.rank(QUERY, TEXTS, activation_fn=torch.nn.Identity())
    assert [set(row) for row in ours] == [set(row) for row in theirs] == [{"corpus_id", "score"}] * len(TEXTS)
    assert [row["corpus_id"] for row in ours] == [row["corpus_id"] for row in theirs]
    np.testing.assert_allclose([row["score"] for row in ours], [row["score"] for row in theirs], atol=1e-5)
    ours_defaults = inspect.signature(reranker.rank).parameters
    theirs_defaults = inspect.signature(library.rank).parameters
    for name in ("top_k", "return_documents"):
        assert ours_defaults[name].default == theirs_defaults[name].default, name


def test_overlong_passage_is_truncated_counted_and_scored_like_the_library(model_dir, library):
    reranker = CrossEncoderReranker(str(model_dir))
    assert reranker.max_length == 128
    long_text = " ".join(["the river spree flows through berlin"] * 40)  # ~240 tokens > 128
    scores = reranker.score(QUERY, [TEXTS[0], long_text, TEXTS[2]])
    assert reranker.truncated == 1
    np.testing.assert_allclose(scores, raw_predict(library, QUERY, [TEXTS[0], long_text, TEXTS[2]]), atol=1e-5)
    reranker.score(QUERY, TEXTS)
    assert reranker.truncated == 1  # short passages are not counted
    short = CrossEncoderReranker(str(model_dir), max_length=16)
    short.score(QUERY, TEXTS)
    over = sum(len(short.tokenizer(QUERY, t)["input_ids"]) > 16 for t in TEXTS)
    assert short.max_length == 16 and 0 < over < len(TEXTS) and short.truncated == over


def test_sigmoid_option(model_dir, reranker):
    raw = reranker.score(QUERY, TEXTS)
    sig = CrossEncoderReranker(str(model_dir), activation="sigmoid").score(QUERY, TEXTS)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-raw)), atol=1e-6)
    with pytest.raises(ValueError):
        CrossEncoderReranker(str(model_dir), activation="minmax")


def test_score_batch_equals_per_query_score(reranker):
    queries = [QUERY, "which museum in paris is famous", "rivers of germany"]
    texts_per_query = [TEXTS, TEXTS[2:5], []]
    batched = reranker.score_batch(queries, texts_per_query)
    assert len(batched) == 3 and batched[2].shape == (0,)
    for query, texts, scores in zip(queries, texts_per_query, batched):
        np.testing.assert_allclose(scores, reranker.score(query, texts), atol=1e-6)
    assert reranker.score(QUERY, []).shape == (0,)
