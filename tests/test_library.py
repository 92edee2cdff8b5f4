"""The engine as a library: in-memory collections saved to disk, documents as plain texts with generated ids, upsert,
count, get, len, context manager, and results that iterate and convert to pandas."""

from __future__ import annotations

import sys

import pytest

from twostage import Engine, UsageError
from twostage.indexes.documents import Document

TEXTS = ["Berlin has 3.8 million inhabitants.", "The Louvre is in Paris.", "Tokyo is the largest metropolis."]


@pytest.fixture
def engine(tiny_bi_encoder_dir):
    with Engine.in_memory(model=str(tiny_bi_encoder_dir), reranker=None) as engine:
        yield engine


def test_plain_texts_get_ids_that_are_returned(engine):
    report = engine.add(TEXTS)
    assert report.added == 3 and len(report.ids) == 3 and len(set(report.ids)) == 3
    assert [doc.text for doc in engine.get(report.ids)] == TEXTS
    assert engine.get(report.ids[0]).text == TEXTS[0] and engine.get("no-such-id") is None
    assert len(engine) == engine.count() == 3


def test_mixed_documents_and_their_ids_in_input_order(engine):
    report = engine.add([{"id": "d1", "text": "one", "city": "berlin"}, Document("d2", "two"), "three"])
    assert report.ids[:2] == ["d1", "d2"] and engine.get("d1").metadata == {"city": "berlin"}
    again = engine.upsert([{"id": "d1", "text": "one, changed"}, Document("d2", "two")])
    assert (again.replaced, again.unchanged, again.added) == (1, 1, 0) and engine.get("d1").text == "one, changed"
    assert engine.count() == 3


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([3], "document 3: expected a text, a dict with 'id' and 'text', or a Document, not int"),
        ([None], "not NoneType"),
        ([{"text": "no id"}], "has no 'id' field"),
        (["  "], "field 'text' must be a non-empty string"),
    ],
)
def test_what_is_wrong_with_a_document_is_said_in_one_line(engine, bad, message):
    with pytest.raises(UsageError, match=message) as info:
        engine.add(["fine", *bad])
    assert "\n" not in str(info.value) and engine.count() == 0  # all or nothing


def test_results_iterate_and_convert_to_pandas(engine):
    engine.add([{"id": f"d{i}", "text": text, "year": 2020 + i} for i, text in enumerate(TEXTS)])
    result = engine.search("Berlin population", top_k=2)
    assert len(result) == 2 and [hit.doc_id for hit in result] == [hit.doc_id for hit in result.hits]
    assert result[0] is result.hits[0]
    pytest.importorskip("pandas")
    frame = result.to_pandas()
    assert list(frame["doc_id"]) == [hit.doc_id for hit in result] and "metadata.year" in frame.columns
    assert list(engine.search("nothing like it", filter={"year": 1900}).to_pandas().columns)[:3] == [
        "doc_id",
        "rank",
        "score",
    ]


def test_to_pandas_without_pandas_is_one_line(engine, monkeypatch):
    engine.add(TEXTS)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"^SearchResult.to_pandas needs pandas: pip install pandas$"):
        engine.search("Berlin").to_pandas()


def test_in_memory_collection_saves_and_reopens(tiny_bi_encoder_dir, tmp_path):
    engine = Engine.in_memory(model=str(tiny_bi_encoder_dir), reranker=None)
    home = engine.collection.path
    engine.add([{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)])
    before = [hit.doc_id for hit in engine.search("Berlin")]
    saved = engine.save(tmp_path / "saved")
    engine.add(["added after the save"])  # the engine keeps its own copy
    with pytest.raises(UsageError, match="already holds a collection"):
        engine.save(tmp_path / "saved")
    engine.close()
    assert not home.exists()
    with Engine.open(saved, reranker=None) as reopened:
        assert reopened.count() == 3 and [hit.doc_id for hit in reopened.search("Berlin")] == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with Engine.in_memory(model=str(tiny_bi_encoder_dir), reranker=None) as engine:
        with pytest.raises(UsageError, match="holds other files"):
            engine.save(tmp_path / "other")
        engine.add(["x"])
        engine.save(saved, overwrite=True)
    with Engine.open(saved, reranker=None) as reopened:
        assert reopened.count() == 1


def test_create_none_is_in_memory_and_refuses_shards(tiny_bi_encoder_dir):
    with Engine.create(None, model=str(tiny_bi_encoder_dir), reranker=None) as engine:
        engine.add(TEXTS)
        assert engine.count() == 3
    with pytest.raises(UsageError, match="not sharded"):
        Engine.create(None, shards=2)
