"""BM25 over bm25s on a toy corpus (the lexical benchmark's baseline, benchmarks/bm25_baseline.py), and reciprocal rank
fusion checked against hand computation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from twostage.indexes.documents import Document

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bm25_baseline import BM25Retriever  # noqa: E402

from twostage.retriever.fusion import reciprocal_rank_fusion, trec_order

DOCS = [
    Document("berlin", "Berlin is the capital of Germany; its population is about 3.7 million inhabitants."),
    Document("cheetah", "The cheetah is the fastest land animal, hunting gazelles on the savanna."),
    Document("seine", "The river flows through the city centre past the cathedral.", title="Paris and the Seine"),
    Document("python", "Python is a programming language with dynamic typing and garbage collection."),
]


@pytest.fixture(scope="module")
def bm25() -> BM25Retriever:
    return BM25Retriever.build(DOCS)


def test_obvious_document_ranks_first(bm25: BM25Retriever) -> None:
    hits = bm25.search(["What is the population of Berlin?", "fastest land animal", "programming language"], k=3)
    assert [h[0][0] for h in hits] == ["berlin", "cheetah", "python"]
    assert all(score > 0 for h in hits for _, score in h)
    assert all([s for _, s in h] == sorted((s for _, s in h), reverse=True) for h in hits)


def test_title_is_indexed_and_defaults(bm25: BM25Retriever) -> None:
    assert bm25.search(["Seine"], k=2)[0][0][0] == "seine"
    assert (bm25.model.k1, bm25.model.b, bm25.model.method) == (0.9, 0.4, "lucene")
    assert len(bm25) == 4


def test_unmatched_and_oversized_k(bm25: BM25Retriever) -> None:
    assert bm25.search(["zzzz qqqq", "", "the"], k=100) == [[], [], []]  # "the" is a stopword
    assert len(bm25.search(["the capital city of Germany Berlin"], k=100)[0]) <= 4
    assert bm25.search([], k=5) == []
    with pytest.raises(TypeError):
        bm25.search("population", k=3)


def test_ids_and_texts_input() -> None:
    bm25 = BM25Retriever.build((["a", "b"], ["red apples and green pears", "blue ocean waves"]), stemmer=None)
    assert [[doc for doc, _ in hits] for hits in bm25.search(["ocean", "apples"], k=2)] == [["b"], ["a"]]
    with pytest.raises(ValueError):
        BM25Retriever.build(([], []))


def test_save_load_round_trip(bm25: BM25Retriever, tmp_path: Path) -> None:
    bm25.save(tmp_path / "bm25")
    loaded = BM25Retriever.load(tmp_path / "bm25")
    queries = ["population of Berlin", "cheetah gazelles", "Paris river"]
    assert loaded.search(queries, k=4) == bm25.search(queries, k=4)
    assert loaded.doc_ids == bm25.doc_ids
    with pytest.raises(FileNotFoundError):
        BM25Retriever.load(tmp_path)


def test_trec_order_breaks_ties_by_docid_descending() -> None:
    assert trec_order({"a": 1.0, "c": 1.0, "b": 2.0}) == [("b", 2.0), ("c", 1.0), ("a", 1.0)]


RUN_A = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"x": 1.0}}
RUN_B = {"q1": {"d3": 10.0, "d1": 5.0, "d4": 1.0}}


def test_rrf_matches_hand_computation() -> None:
    fused = reciprocal_rank_fusion([RUN_A, RUN_B])
    expected = {"d1": 1 / 61 + 1 / 62, "d3": 1 / 63 + 1 / 61, "d2": 1 / 62, "d4": 1 / 63}
    assert list(fused["q1"]) == ["d1", "d3", "d2", "d4"]
    assert fused["q1"] == pytest.approx(expected)
    assert fused["q2"] == pytest.approx({"x": 1 / 61})


def test_rrf_weights_k_and_depth() -> None:
    weighted = reciprocal_rank_fusion([RUN_A, RUN_B], k=10, weights=[2.0, 1.0])
    assert weighted["q1"] == pytest.approx({"d1": 2 / 11 + 1 / 12, "d2": 2 / 12, "d3": 2 / 13 + 1 / 11, "d4": 1 / 13})
    shallow = reciprocal_rank_fusion([RUN_A, RUN_B], depth=1)
    assert list(shallow["q1"].items()) == [("d3", pytest.approx(1 / 61)), ("d1", pytest.approx(1 / 61))]


def test_rrf_ranks_tied_input_like_trec_eval() -> None:
    fused = reciprocal_rank_fusion([{"q": {"a": 1.0, "b": 1.0}}])
    assert fused["q"] == pytest.approx({"b": 1 / 61, "a": 1 / 62})


def test_rrf_on_per_query_lists_uses_list_order() -> None:
    dense = [[("d1", 0.9), ("d2", 0.8)], [("z", 0.1)]]
    bm25 = [[("d2", 7.0), ("d3", 6.0)], []]
    fused = reciprocal_rank_fusion([dense, bm25])
    assert fused[0] == [
        ("d2", pytest.approx(1 / 62 + 1 / 61)),
        ("d1", pytest.approx(1 / 61)),
        ("d3", pytest.approx(1 / 62)),
    ]
    assert fused[1] == [("z", pytest.approx(1 / 61))]


def test_rrf_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([])
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([RUN_A, RUN_B], weights=[1.0])
    with pytest.raises(TypeError):
        reciprocal_rank_fusion([RUN_A, [[("d1", 1.0)]]])
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([[[("a", 1.0)]], [[("a", 1.0)], []]])
