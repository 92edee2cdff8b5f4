"""MaxSimReranker: exact late-interaction arithmetic on a tiny bi-encoder, token store parity, and one real-model ranking."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from twostage.reranker import Candidate, MaxSimReranker
from twostage.reranker.maxsim import mapping_lookup

QUERY = "how many people live in berlin"
PASSAGES = [
    "berlin has a population of about 3 million people",
    "the museum island in berlin is famous for its art",
    "paris is the capital of france",
]


@pytest.fixture(scope="module")
def tiny(tiny_bi_encoder_dir):
    return SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu")


def content_token_vectors(model: SentenceTransformer, text: str) -> np.ndarray:
    """Independent reference: the bi-encoder's token outputs without [CLS]/[SEP]/padding, L2-normalised, via fp16."""
    out = model.encode([text], output_value=None, show_progress_bar=False)[0]
    ids = out["input_ids"].numpy()
    keep = out["attention_mask"].numpy().astype(bool) & ~np.isin(ids, model.tokenizer.all_special_ids)
    vectors = out["token_embeddings"].numpy()[keep].astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float16).astype(np.float64)  # passages are stored as float16
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_scores_equal_direct_numpy_maxsim(tiny):
    q = content_token_vectors(tiny, QUERY)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    expected = []
    for passage in PASSAGES:
        d = content_token_vectors(tiny, passage)
        expected.append((q @ d.T).max(axis=1).sum())
    assert len(q) == 6  # six content tokens, specials excluded
    scores = MaxSimReranker(tiny).score(QUERY, PASSAGES)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_accepts_an_object_with_a_model_attribute(tiny):
    class BiEncoder:
        model = tiny

    wrapped = MaxSimReranker(BiEncoder()).score(QUERY, PASSAGES)
    np.testing.assert_array_equal(wrapped, MaxSimReranker(tiny).score(QUERY, PASSAGES))
    with pytest.raises(TypeError):
        MaxSimReranker(object())


def test_token_store_gives_the_same_scores_as_on_the_fly(tiny):
    plain = MaxSimReranker(tiny)
    stored = dict(zip(["d0", "d1", "d2"], plain.passage_token_embeddings(PASSAGES)))
    assert all(a.dtype == np.float16 and a.ndim == 2 and a.shape[1] == 32 for a in stored.values())
    lookups: list[str] = []

    def store(doc_ids: list[str]) -> list[np.ndarray | None]:
        lookups.extend(doc_ids)
        return mapping_lookup(stored)(doc_ids)

    with_store = MaxSimReranker(tiny, token_store=store)
    candidates = [Candidate(f"d{i}", text) for i, text in enumerate(PASSAGES)] + [Candidate("new", "berlin river")]
    ranked = with_store.rerank(QUERY, candidates)
    fresh = plain.rerank(QUERY, candidates)
    assert lookups == ["d0", "d1", "d2", "new"]  # "new" is missing from the store and encoded on the fly
    assert [(r.index, r.doc_id) for r in ranked] == [(r.index, r.doc_id) for r in fresh]
    assert [r.score for r in ranked] == [r.score for r in fresh]
    assert [r.doc_id for r in with_store.rerank(QUERY, candidates, top_n=2)] == [r.doc_id for r in ranked[:2]]


def test_score_batch_equals_per_query_score_and_truncation_is_counted(tiny):
    reranker = MaxSimReranker(tiny)
    queries = [QUERY, "famous museum in paris"]
    batched = reranker.score_batch(queries, [PASSAGES, PASSAGES[1:]])
    for query, texts, scores in zip(queries, [PASSAGES, PASSAGES[1:]], batched):
        np.testing.assert_allclose(scores, reranker.score(query, texts), atol=1e-5)
    assert reranker.truncated == 0
    reranker.score(QUERY, [" ".join(["berlin river"] * 100)])  # 200 tokens > max_seq_length 128
    assert reranker.truncated == 1
    assert reranker.score(QUERY, [""]).shape == (1,)  # an empty passage still gets a (finite) score
    assert np.isfinite(reranker.score("", PASSAGES)).all()


def test_many_queries_are_scored_in_passes_of_bounded_size_with_the_same_scores(tiny, monkeypatch):
    """A query file at a deep candidate depth is scored a few queries at a time (at most ``PASS_PASSAGES`` distinct
    passages per store read; a query with more alone; a passage the queries of a pass share read once), with the
    scores one pass gives, on the torch path too."""
    from twostage.reranker import maxsim

    ids = [f"d{i}" for i in range(6)]
    texts = dict(zip(ids, [*PASSAGES, "berlin river", "museum of paris", "france and germany"]))
    stored = dict(zip(ids, MaxSimReranker(tiny).passage_token_embeddings(list(texts.values()))))
    reads: list[list[str]] = []

    def store(doc_ids: list[str]) -> list[np.ndarray | None]:
        reads.append(list(doc_ids))
        return mapping_lookup(stored)(doc_ids)

    reranker = MaxSimReranker(tiny, token_store=store)
    queries = [QUERY, "famous museum in paris", "capital of france", "berlin art"]
    picks = [["d0", "d1", "d2"], ["d0", "d1"], ["d3", "d4", "d5"], ["d5"]]
    candidates = [[Candidate(i, texts[i]) for i in pick] for pick in picks]
    whole = reranker.score_candidates(queries, candidates)
    assert [len(r) for r in reads] == [9]
    monkeypatch.setattr(maxsim, "PASS_PASSAGES", 3)
    assert maxsim._passes(picks) == [slice(0, 2), slice(2, 4)]  # the second query adds no new passage
    assert maxsim._passes([["a", "b", "c", "d"], ["e"]]) == [slice(0, 1), slice(1, 2)]
    assert maxsim._passes([]) == [slice(0, 0)]
    reads.clear()
    in_passes = reranker.score_candidates(queries, candidates)
    assert reads == [["d0", "d1", "d2", "d0", "d1"], ["d3", "d4", "d5", "d5"]]
    for got, want in zip(in_passes, whole):  # equal up to float32 rounding (passes pad their matmuls differently)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    plain = [[texts[i] for i in pick] for pick in picks]
    for got, want in zip(reranker.score_batch(queries, plain), MaxSimReranker(tiny).score_batch(queries, plain)):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_real_minilm_prefers_the_passages_that_answer(minilm_path):
    model = SentenceTransformer(str(minilm_path), device="cpu")
    passages = [
        "Berlin is well known for its museums.",
        "Berlin had a population of 3,520,031 registered inhabitants in 2019.",
        "Paris is the capital of France and has many museums and galleries.",
        "In 2019 about 3.6 million people lived in Berlin, the most populous city of Germany.",
        "Munich has a population of around 1.5 million people.",
        "The Museum Island in Berlin holds five world-famous museums.",
    ]
    scores = MaxSimReranker(model).score("How many people live in Berlin?", passages)
    answers, others = scores[[1, 3]], scores[[0, 2, 4, 5]]
    assert answers.min() > others.max(), scores


def test_light_path_encodes_passages_without_stored_tokens(minilm_path):
    """On an exported backend, candidates without stored tokens are encoded on that backend too (no torch model is
    loaded), content tokens in float16 as a store keeps them, and they rank as the torch path ranks them."""
    from twostage.retriever.biencoder import BiEncoder

    texts = [
        "Berlin has about 3.7 million inhabitants.",
        "The Louvre is an art museum in Paris.",
        "Volcanoes erupt when magma rises to the surface.",
        "Sourdough bread needs a fermented starter.",
    ]
    candidates = [Candidate(f"d{i}", t) for i, t in enumerate(texts)]
    queries = ["How many people live in Berlin?", "bread starter"]
    BiEncoder(str(minilm_path), backend="openvino", cache=None).encode_documents(["x"])  # the export, once
    encoder = BiEncoder(str(minilm_path), backend="openvino", cache=None)
    assert encoder.light is not None
    light = MaxSimReranker(
        encoder, token_store=mapping_lookup({"d1": MaxSimReranker(encoder)._light_passages([texts[1]])[0]})
    )
    scores = light.score_candidates(queries, [candidates, candidates])
    assert encoder._model is None  # no SentenceTransformer (torch) was needed
    reference = MaxSimReranker(BiEncoder(str(minilm_path), backend="torch", cache=None))
    expected = reference.score_candidates(queries, [candidates, candidates])
    for got, want in zip(scores, expected):
        assert list(np.argsort(-got)) == list(np.argsort(-want))
        np.testing.assert_allclose(got, want, rtol=0.02)
    assert light.truncated == 0
