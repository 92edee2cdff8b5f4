"""The first stage as a choice (dense, bm25, hybrid) and the collection's lexical index (SQLite FTS5 in
documents.sqlite) kept in step with add, replace and delete, crash-safely."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import pytest

from twostage import Engine, UsageError
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.lexical import match_expression, query_terms
from twostage.retriever.fusion import FirstStage, weighted_fusion

DOCS = [
    Document("zeppelin", "The zeppelin is a rigid airship named after Count Ferdinand von Zeppelin."),
    Document("berlin", "Berlin has a population of about 3.7 million inhabitants."),
    Document("paris", "Paris has about 2.1 million inhabitants within its city limits."),
    Document("bread", "A sourdough starter is a fermented mixture of flour and water.", title="Baking"),
    Document("light", "Photosynthesis converts light energy into chemical energy."),
]


@pytest.fixture()
def engine(tmp_path, minilm):
    engine = Engine.create(tmp_path / "c", encoder=minilm, reranker=None, index_type="flat")
    engine.add(DOCS)
    yield engine
    engine.close()


def _ids(result) -> list[str]:
    return [hit.doc_id for hit in result.hits]


def test_first_stage_spec_parses_and_refuses():
    assert FirstStage.parse(None).kind == "dense"
    assert FirstStage.parse("hybrid") == FirstStage("hybrid", "rrf", 60.0)
    assert FirstStage.parse("hybrid:weighted:0.3").weight == 0.3
    assert FirstStage.parse("hybrid:rrf:10").rrf_k == 10
    assert FirstStage.parse("hybrid:weighted:0.3").label == "hybrid:weighted:0.3"
    for bad in ("sparse", "bm25:rrf", "hybrid:max", "hybrid:weighted:2", "hybrid:rrf:x", "hybrid:rrf:1:2"):
        with pytest.raises(ValueError):
            FirstStage.parse(bad)


def test_weighted_fusion_normalises_each_run():
    fused = dict(weighted_fusion([[("a", 10.0), ("b", 0.0)], [("b", 0.9), ("c", 0.1)]], [0.5, 0.5]))
    assert fused == {"a": 0.5, "b": 0.5, "c": 0.0}


def test_query_terms_drop_stop_words_and_quote_operators():
    assert query_terms("What is the NEAR of AND, or Berlin?") == ["what", "near", "berlin"]
    assert match_expression("the a of") is None
    assert match_expression('"Berlin" NOT') == '"berlin"'


def test_bm25_finds_the_rare_word_and_hybrid_fuses(engine):
    bm25 = engine.search("zeppelin", k=5, first_stage="bm25")
    assert _ids(bm25) == ["zeppelin"]  # the only document sharing a term
    assert bm25.hits[0].retrieval_score > 0 and bm25.timings.encode_s == 0
    dense = engine.search("zeppelin", k=5)
    assert len(dense.hits) == 5
    hybrid = engine.search("zeppelin", k=5, first_stage="hybrid")
    assert _ids(hybrid)[0] == "zeppelin" and set(_ids(hybrid)) == set(_ids(dense))
    weighted = engine.search("zeppelin", k=5, first_stage="hybrid:weighted:0.2")
    assert _ids(weighted)[0] == "zeppelin" and weighted.hits[0].retrieval_score == pytest.approx(1.0)
    many = engine.search_many(["zeppelin airship", "sourdough baking"], k=3, first_stage="bm25")
    assert [_ids(r)[0] for r in many] == ["zeppelin", "bread"]  # the title is indexed too


def test_bm25_honours_filters_and_bad_options_are_usage_errors(tmp_path, minilm):
    with Engine.create(tmp_path / "f", encoder=minilm, reranker=None, index_type="flat") as engine:
        engine.add([{"id": "a", "text": "red apples", "kind": "fruit"}, {"id": "b", "text": "red cars", "kind": "car"}])
        assert _ids(engine.search("red", first_stage="bm25", filter={"kind": "car"})) == ["b"]
        with pytest.raises(UsageError, match="first stage"):
            engine.search("red", first_stage="sparse")
        with pytest.raises(UsageError, match="dense or hybrid"):
            engine.search("red", first_stage="bm25", prf="2:0.5")
        with pytest.raises(UsageError, match="rerank_depth"):
            engine.search("red", rerank_depth=0)


def test_lexical_index_follows_add_replace_delete(tmp_path, minilm, engine):
    engine.add([Document("paris", "Paris is the home of the zeppelin museum.")])  # replaced: new text, new terms
    assert set(_ids(engine.search("zeppelin", first_stage="bm25"))) == {"zeppelin", "paris"}
    assert "paris" not in _ids(engine.search("inhabitants", first_stage="bm25"))  # its old terms are gone
    engine.delete(["zeppelin"])
    assert _ids(engine.search("zeppelin", first_stage="bm25")) == ["paris"]
    engine.add([Document("zeppelin", "Back again: a zeppelin.")])
    assert set(_ids(engine.search("zeppelin", first_stage="bm25"))) == {"zeppelin", "paris"}
    path = engine.collection.path
    engine.close()
    with Engine.open(path, encoder=minilm, reranker=None) as reopened:
        assert set(_ids(reopened.search("zeppelin", first_stage="bm25"))) == {"zeppelin", "paris"}


def test_collection_without_lexical_index_builds_it_on_first_need(engine):
    store = engine.collection.store
    with store.transaction() as con:  # as a collection made before the lexical index existed
        con.execute("DROP TABLE lexical")
        con.execute("DELETE FROM meta WHERE key = 'lexical'")
    assert not engine.collection.lexical.ready
    engine.add([Document("ship", "An airship is not a zeppelin unless rigid.")])  # a write leaves it to the build
    assert set(_ids(engine.search("zeppelin", first_stage="bm25"))) == {"zeppelin", "ship"}
    assert engine.collection.lexical.ready


def test_reranking_only_the_top_depth(tmp_path, minilm):
    with Engine.create(tmp_path / "r", encoder=minilm, reranker="maxsim", index_type="flat") as engine:
        engine.add(DOCS)
        result = engine.search("zeppelin airship", k=5, top_n=5, first_stage="hybrid", rerank_depth=2)
        assert [h.rerank_score is not None for h in result.hits] == [True, True, False, False, False]
        assert [h.retrieval_rank for h in result.hits[2:]] == [3, 4, 5]
        run = result.run()
        assert list(run) == _ids(result) and list(run.values()) == sorted(run.values(), reverse=True)


_WRITER = """
import sys
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
import numpy as np
c = Collection.open(sys.argv[1])
i = 0
while True:
    docs = [Document(f"w{i}-{j}", f"zeppelin number {i} {j}") for j in range(50)]
    c.upsert(docs, np.ones((50, c.manifest.dimension), dtype=np.float32))
    print(i, flush=True)
    i += 1
"""


def test_lexical_index_survives_kill_9_in_step_with_documents(tmp_path, minilm, engine):
    """A writer killed mid-run leaves the FTS5 index exactly as many rows as the committed documents."""
    path = engine.collection.path
    engine.close()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(4):  # several batches committed, then killed while writing more
            assert proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Collection.open(path) as collection:
        count = len(collection)
        assert count >= len(DOCS) + 4 * 50
        hits = collection.lexical_search(["zeppelin"], k=10_000)[0]
        assert len(hits) == count - len(DOCS) + 1  # every committed writer document, plus the original zeppelin
        con = sqlite3.connect(path / "documents.sqlite")
        assert con.execute("SELECT count(*) FROM lexical").fetchone()[0] == count
        con.close()


def test_sharded_collection_merges_each_shards_bm25(tmp_path, minilm):
    with Engine.create(tmp_path / "s", encoder=minilm, reranker=None, index_type="flat", shards=2) as engine:
        engine.add(DOCS)
        assert _ids(engine.search("zeppelin", first_stage="bm25")) == ["zeppelin"]
        hits = engine.search("million inhabitants", first_stage="bm25").hits
        assert {h.doc_id for h in hits} == {"berlin", "paris"}
        assert [h.retrieval_score for h in hits] == sorted((h.retrieval_score for h in hits), reverse=True)
