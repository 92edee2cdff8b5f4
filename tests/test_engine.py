"""The engine end to end on a real FAISS index, a real SQLite file and the real packaged bi-encoder."""

from __future__ import annotations

import json
import time

import pytest
from conftest import EXAMPLES

from twostage import Engine, UsageError
from twostage.indexes.documents import Document
from twostage.indexes.readers import read_corpus
from twostage.reranker.cross_encoder import CrossEncoderReranker
from twostage.retriever.biencoder import BiEncoder

BERLIN = [
    Document(
        "b1",
        "Berlin has a population of about 3.7 million registered inhabitants, making it the largest city in Germany.",
    ),
    Document(
        "b2", "Around 3.8 million people live in Berlin, and the wider metropolitan region is home to over six million."
    ),
    Document("b3", "The number of residents of Berlin grew by roughly forty thousand people last year."),
    Document("m1", "Berlin's Museum Island holds five world-famous museums, including the Pergamon Museum."),
    Document(
        "m2", "The Berlin Wall Memorial and the East Side Gallery attract millions of tourists to Berlin every year."
    ),
    Document("m3", "Berlin is known for its nightlife, its techno clubs and its many art galleries."),
    Document("p1", "Paris has about 2.1 million inhabitants within its city limits."),
    Document("p2", "The Louvre in Paris is the most visited art museum in the world."),
    Document("x1", "Photosynthesis converts light energy into chemical energy stored in glucose."),
    Document("x2", "A sourdough starter is a fermented mixture of flour and water."),
]
ANSWERS = {"b1", "b2", "b3"}


@pytest.fixture()
def berlin_engine(tmp_path, minilm):
    engine = Engine.create(tmp_path / "berlin", encoder=minilm, reranker=None, index_type="flat")
    engine.add(BERLIN)
    yield engine
    engine.close()


def test_population_question_ranks_answers_first(berlin_engine):
    """The classic cross-encoder example's shape: passages that state the population rank above the rest."""
    result = berlin_engine.search("How many people live in Berlin?", k=10, top_n=10, rerank=False)
    ranked = [hit.doc_id for hit in result.hits]
    assert set(ranked[:3]) == ANSWERS, ranked
    assert [h.retrieval_rank for h in result.hits] == list(range(1, 11))
    scores = [h.retrieval_score for h in result.hits]
    assert scores == sorted(scores, reverse=True)


def test_example_collection_search_and_rerank(tmp_path, minilm, tiny_cross_encoder_dir):
    reranker = CrossEncoderReranker(str(tiny_cross_encoder_dir))
    engine = Engine.create(tmp_path / "example", encoder=minilm, reranker=reranker)
    report = engine.add(read_corpus(EXAMPLES / "corpus.jsonl"))
    assert report.added == len(engine.collection) >= 90
    result = engine.search("How many people live in Berlin?", k=20, top_n=5)
    assert len(result.hits) == 5 and result.candidates == 20
    assert result.hits[0].rerank_rank == 1
    rerank_scores = [h.rerank_score for h in result.hits]
    assert rerank_scores == sorted(rerank_scores, reverse=True)
    assert all(h.retrieval_rank is not None and 1 <= h.retrieval_rank <= 20 for h in result.hits)
    # The tiny model's scores equal a direct call on the same (query, passage) pairs.
    direct = reranker.score(
        "How many people live in Berlin?",
        [Document(h.doc_id, h.text, h.title).text_for_encoding() for h in result.hits],
    )
    assert [round(x, 5) for x in direct] == [round(x, 5) for x in rerank_scores]
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["hits"][0]["doc_id"] == result.hits[0].doc_id
    assert set(payload["timings"]) == {"encode_s", "search_s", "rerank_s", "total_s"}
    engine.close()


def test_search_many_equals_search(berlin_engine):
    queries = ["How many people live in Berlin?", "famous art museum in Paris", "bread baking"]
    many = berlin_engine.search_many(queries, k=5, top_n=3, rerank=False)
    for query, result in zip(queries, many):
        single = berlin_engine.search(query, k=5, top_n=3, rerank=False)
        assert [h.doc_id for h in result.hits] == [h.doc_id for h in single.hits]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq", "IVF2,Flat"])
def test_delete_and_replace_on_every_index_type(tmp_path, minilm, index_type):
    with Engine.create(tmp_path / index_type, encoder=minilm, reranker=None, index_type=index_type) as engine:
        engine.add(BERLIN)
        report = engine.delete(["b1", "b2", "nope"])
        assert report.deleted == ["b1", "b2"] and report.missing == ["nope"]
        ids = [h.doc_id for h in engine.search("How many people live in Berlin?", k=100, top_n=100, rerank=False).hits]
        assert "b1" not in ids and "b2" not in ids and len(ids) == len(BERLIN) - 2
        engine.add([Document("x1", "Berlin has 3.9 million inhabitants according to the newest census.")])
        result = engine.search("How many people live in Berlin?", k=100, top_n=100, rerank=False)
        assert [h.doc_id for h in result.hits].count("x1") == 1
        assert next(h for h in result.hits if h.doc_id == "x1").text.startswith("Berlin has 3.9")
    with Engine.open(tmp_path / index_type, encoder=minilm, reranker=None) as engine:
        ids = [h.doc_id for h in engine.search("Berlin population", k=100, top_n=100, rerank=False).hits]
        assert sorted(ids) == sorted({d.id for d in BERLIN} - {"b1", "b2"})


def test_metadata_filter(tmp_path, minilm):
    docs = [Document(d.id, d.text, metadata={"city": d.id[0], "year": 2020 + i}) for i, d in enumerate(BERLIN)]
    with Engine.create(tmp_path / "f", encoder=minilm, reranker=None) as engine:
        engine.add(docs)
        hits = engine.search("museum", k=100, top_n=100, rerank=False, filter={"city": "p"}).hits
        assert {h.doc_id for h in hits} == {"p1", "p2"}
        hits = engine.search("museum", k=100, top_n=100, rerank=False, filter={"year": "2023"}).hits
        assert [h.doc_id for h in hits] == ["m1"]
        assert engine.search("museum", filter={"nokey": "1"}, rerank=False).hits == []


def test_unchanged_documents_are_skipped(berlin_engine):
    report = berlin_engine.add(BERLIN)
    assert report.unchanged == len(BERLIN) and report.added == report.replaced == 0
    report = berlin_engine.add([Document("b1", "Berlin: 3.7 million people.", metadata={"v": 2})])
    assert report.replaced == 1 and len(berlin_engine.collection) == len(BERLIN)


def test_bad_requests_get_clear_errors(berlin_engine):
    with pytest.raises(UsageError, match="empty"):
        berlin_engine.search("   ")
    with pytest.raises(UsageError, match="k must be a positive integer"):
        berlin_engine.search("berlin", k=0)
    with pytest.raises(UsageError, match="twice"):
        berlin_engine.add([Document("z", "one"), Document("z", "two")])
    with pytest.raises(UsageError, match="'text'"):
        berlin_engine.add([{"id": "y", "text": 5}])
    with pytest.raises(UsageError, match="TREC runs cannot hold"):  # checked whole: the good first one is not stored
        berlin_engine.add([Document("ok", "fine"), Document("two words", "x")])
    with pytest.raises(UsageError, match="field 'text': not valid Unicode"):
        berlin_engine.add([Document("ok", "fine"), {"id": "s", "text": "lone \ud800"}])
    for bad in (
        Document("z", "x", metadata={"v": float("nan")}),
        Document("z", "x", title=["a"]),
        Document(7, "x"),
        {"id": None, "text": "x"},
        Document("z", "x", metadata={"s": {1}}),
    ):  # after 300 good ones
        with pytest.raises(UsageError, match="metadata is not JSON|'title'|must be a string"):
            berlin_engine.add([Document(f"g{i}", "good text") for i in range(300)] + [bad])
    assert len(berlin_engine.collection) == len(BERLIN)  # nothing lost
    result = berlin_engine.search("berlin", k=1000, top_n=50, rerank=False)
    assert len(result.hits) == len(BERLIN)
    assert any("larger than the collection" in n for n in result.notices)


def test_other_bi_encoder_is_refused(tmp_path, minilm, tiny_bi_encoder_dir):
    with Engine.create(tmp_path / "c", encoder=minilm, reranker=None) as engine:
        engine.add(BERLIN[:3])
    with pytest.raises(UsageError, match="built with bi-encoder"):
        Engine.open(tmp_path / "c", model=str(tiny_bi_encoder_dir), reranker=None)


def test_reindexing_unchanged_corpus_reuses_cached_embeddings(tmp_path, minilm_path):
    """A second ``index`` of the same texts into a new collection is ≥10x faster: embeddings come from the cache."""
    docs = [
        Document(f"{d.id}-{i}", f"{d.text} (copy {i})", d.title)
        for i in range(3)
        for d in read_corpus(EXAMPLES / "corpus.jsonl")
    ]
    from twostage.retriever.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    encoder = BiEncoder(str(minilm_path), cache=cache)
    timings = []
    for run in ("first", "second"):
        with Engine.create(tmp_path / run, encoder=encoder, reranker=None) as engine:
            started = time.perf_counter()
            report = engine.add(docs)
            timings.append(time.perf_counter() - started)
    assert report.cache_hits == len(docs)
    assert timings[0] / timings[1] >= 10, timings
