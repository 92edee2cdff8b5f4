"""``twostage.rank`` and ``Ranker``: texts given in the call ranked in two stages, in ``CrossEncoder.rank``'s shape,
with every reranker loaded by name (the default cross-encoder falling back to MaxSim offline, with a warning)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import EXAMPLES

import twostage
from twostage import Ranker, UsageError
from twostage.reranker import CrossEncoderReranker, MaxSimReranker
from twostage.reranker.loading import RerankerFallbackWarning

QUERY = "How many people live in Berlin?"
CITIES = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text(encoding="utf-8").splitlines()][:10]
PASSAGES = [row["text"] for row in CITIES]


def ids(rows: list[dict]) -> list[str]:
    return [CITIES[row["corpus_id"]]["id"] for row in rows]


def test_rank_offline_puts_the_population_passages_on_top_with_maxsim():
    """The seed page's call: the default cross-encoder is not here, so MaxSim over all-MiniLM-L6-v2 stands in and says
    so once, in Python's words; Berlin's population first, then Paris's."""
    with pytest.warns(RerankerFallbackWarning, match="using late-interaction MaxSim") as caught:
        first = twostage.rank(QUERY, PASSAGES)
    assert "--" not in str(caught[0].message) and caught[0].filename == __file__
    assert ids(first)[:2] == ["cities-01", "cities-03"]
    assert sorted(row["corpus_id"] for row in first) == list(range(10)) and set(first[0]) == {"corpus_id", "score"}
    assert [row["score"] for row in first] == sorted((row["score"] for row in first), reverse=True)
    again = twostage.rank(QUERY, PASSAGES, top_k=3, return_documents=True)  # the same Ranker, already loaded
    assert ids(again) == ids(first)[:3] and again[0]["text"] == PASSAGES[0]


def test_rank_with_a_cross_encoder_path_uses_it(tiny_bi_encoder_dir, tiny_cross_encoder_dir):
    """Every text within the candidate depth: the order and scores are the cross-encoder's own ``rank``."""
    ranker = Ranker(tiny_bi_encoder_dir, str(tiny_cross_encoder_dir))
    assert isinstance(ranker.reranker, CrossEncoderReranker) and ranker.notices == []
    expected = CrossEncoderReranker(str(tiny_cross_encoder_dir)).rank(QUERY, PASSAGES, return_documents=True)
    got = ranker.rank(QUERY, PASSAGES, return_documents=True)
    assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in expected]
    assert np.allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-5)
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    by_function = twostage.rank(QUERY, PASSAGES, model=tiny_bi_encoder_dir, reranker=str(tiny_cross_encoder_dir))
    assert [r["corpus_id"] for r in by_function] == [r["corpus_id"] for r in expected]


def test_rerank_is_the_second_stage_alone(tiny_bi_encoder_dir, tiny_cross_encoder_dir):
    ranker = Ranker(tiny_bi_encoder_dir, str(tiny_cross_encoder_dir), candidate_depth=2)  # depth: rank() only
    expected = CrossEncoderReranker(str(tiny_cross_encoder_dir)).rank(QUERY, PASSAGES, top_k=5)
    got = ranker.rerank(QUERY, PASSAGES, top_k=5)
    assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in expected]
    assert np.allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-5)
    with pytest.raises(UsageError, match="has no reranker"):
        Ranker(tiny_bi_encoder_dir, None).rerank(QUERY, PASSAGES)


def test_candidate_depth_bounds_what_is_reranked_and_returned(tiny_bi_encoder_dir, tiny_cross_encoder_dir):
    first_stage = Ranker(tiny_bi_encoder_dir, None).rank(QUERY, PASSAGES)
    ranker = Ranker(tiny_bi_encoder_dir, str(tiny_cross_encoder_dir), candidate_depth=4)
    got = ranker.rank(QUERY, PASSAGES)
    assert len(got) == 4 and {r["corpus_id"] for r in got} == {r["corpus_id"] for r in first_stage[:4]}
    assert len(ranker.rank(QUERY, PASSAGES, candidate_depth=6, top_k=2)) == 2


def test_first_stage_alone_is_the_bi_encoders_cosine(tiny_bi_encoder_dir):
    from sentence_transformers import SentenceTransformer

    got = Ranker(tiny_bi_encoder_dir, "none").rank(QUERY, PASSAGES)
    model = SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu")
    cosine = model.encode(PASSAGES, normalize_embeddings=True) @ model.encode(QUERY, normalize_embeddings=True)
    assert [r["corpus_id"] for r in got] == np.argsort(-cosine, kind="stable").tolist()
    assert np.allclose([r["score"] for r in got], np.sort(cosine)[::-1], atol=1e-4)


def test_maxsim_by_name_needs_no_collection(tiny_bi_encoder_dir):
    ranker = Ranker(tiny_bi_encoder_dir, "maxsim")
    assert isinstance(ranker.reranker, MaxSimReranker) and ranker.notices == []
    assert len(ranker.rank(QUERY, PASSAGES, top_k=5)) == 5


@pytest.mark.parametrize(
    ("query", "texts", "options", "message"),
    [
        ("", PASSAGES, {}, "the query is empty"),
        (QUERY, "one text", {}, "texts must be a list of strings, not str"),
        (QUERY, ["fine", 3], {}, r"texts\[1\] is a int, not a string"),
        (QUERY, PASSAGES, {"top_k": 0}, "top_k must be a positive integer"),
        (QUERY, PASSAGES, {"candidate_depth": -1}, "candidate_depth must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(tiny_bi_encoder_dir, query, texts, options, message):
    with pytest.raises(UsageError, match=message):
        Ranker(tiny_bi_encoder_dir, None).rank(query, texts, **options)


def test_no_texts_no_results(tiny_bi_encoder_dir):
    assert Ranker(tiny_bi_encoder_dir, None).rank(QUERY, []) == []
