"""Long documents as passages: the splitter, passages stored under their documents, document hits with the passage
that matched, old collections opened as one-passage documents, explain."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document, Passage
from twostage.ingest.extract import Page, Section, StructuredDocument
from twostage.ingest.passages import Splitter, encoding_texts, splitter_for

FIXTURES = Path(__file__).parent / "fixtures" / "pre_passages"
TOPICS = [
    ("Office hours", "The office opens at eight in the morning and closes at six in the evening on weekdays."),
    ("Holidays", "Every employee receives twenty five days of paid leave per calendar year, taken in agreement."),
    ("Equipment", "Laptops are replaced every three years; monitors and keyboards are requested from the help desk."),
    ("Travel", "Train travel is preferred for trips under six hours; flights need the approval of a manager."),
    ("Expenses", "Receipts must be uploaded within thirty days, after which reimbursement can no longer be made."),
    ("Security", "Badges must be worn visibly inside the building, and visitors are accompanied at all times."),
]
ANSWER = "The parking garage beneath the north wing has forty spaces reserved for bicycles and electric scooters."


def handbook(repeat: int = 4) -> str:
    """A Markdown handbook of about 1,500 words whose one sentence about bicycle parking sits near the end."""
    parts = ["# Staff handbook\n"]
    for round_ in range(repeat):
        for title, sentence in TOPICS:
            parts.append(f"## {title} ({round_ + 1})\n\n" + " ".join([sentence] * 3) + "\n")
    parts.append(
        "## Facilities\n\nThe canteen serves lunch from noon. " + ANSWER + " Showers are on the ground floor.\n"
    )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(minilm_path) / "tokenizer.json"))


def test_split_fits_the_window_on_structure_with_offsets(tokenizer):
    doc = Document("hb", handbook(), "Handbook")
    passages = Splitter(tokenizer, 128, overlap=16).split(doc)
    assert len(passages) > 5
    texts = encoding_texts(doc, passages)
    copy = Splitter(tokenizer, 128).tokenizer
    assert max(len(copy.encode(t).ids) for t in texts) <= 128  # specials, title and headings included
    for passage in passages:
        assert doc.text[passage.start : passage.end] == passage.text
        assert passage.start == 0 or not doc.text[passage.start - 1].isalnum()  # never inside a word
        assert passage.end == len(doc.text) or not doc.text[passage.end].isalnum()
        assert passage.headings[0] == "Staff handbook"
    # every section start is a cut: no passage runs from one "## " section into the next (the first holds the H1)
    assert all(passage.text.count("\n## ") == 0 for passage in passages[1:])
    answer = next(p for p in passages if ANSWER in p.text)
    assert answer.headings == ["Staff handbook", "Facilities"]
    assert passages[-1].end == len(doc.text.rstrip())


def test_passages_are_whole_paragraphs_packed_to_half_the_window_and_overlap_only_inside_one(tokenizer):
    """With "fill" packing, paragraphs are packed while they hold at most half the window, never cut or overlapped; a
    paragraph longer than the window is cut inside, and only those cuts repeat ``overlap`` tokens of the passage
    before."""
    sentences = [sentence for _, sentence in TOPICS]
    paragraphs = [" ".join(sentences[i % 6 : i % 6 + 2]) for i in range(12)]  # ~40 tokens each
    doc = Document("plain", "\n\n".join(paragraphs))
    splitter = Splitter(tokenizer, 128, overlap=16, packing="fill")
    passages = splitter.split(doc)
    size = [len(splitter.tokenizer.encode(text).ids) for text in paragraphs]  # 17 to 38 tokens, specials included
    starts = [doc.text.index(text, sum(len(t) + 2 for t in paragraphs[:i])) for i, text in enumerate(paragraphs)]
    runs = [[i for i, at in enumerate(starts) if p.start <= at < p.end] for p in passages]
    assert all(p.text == "\n\n".join(paragraphs[run[0] : run[-1] + 1]) for p, run in zip(passages, runs))
    assert [i for run in runs for i in run] == list(range(12))  # each paragraph once, whole, in order: no overlap
    assert all(a.end <= b.start for a, b in zip(passages, passages[1:]))
    for run, following in zip(runs, runs[1:]):  # packed greedily: the next paragraph would pass half the window
        assert sum(size[i] for i in run) <= 64 and sum(size[i] for i in run) + size[following[0]] > 64 - 4
    assert any(len(run) > 1 for run in runs)
    long_one = Document("long", " ".join(sentences * 4))  # one paragraph of ~400 tokens: cut inside, overlapping
    cut = splitter.split(long_one)
    assert len(cut) > 2 and all(b.start < a.end for a, b in zip(cut, cut[1:]))
    filled = Splitter(tokenizer, 128, overlap=16, paragraph_share=None).split(doc)  # the old way: fill the window
    assert len(filled) < len(passages)
    # a PDF's page break (a blank line in its text) is no paragraph: a sentence running across it is overlapped
    page = "Words about apples and orchards. " * 20 + "The parking garage beneath the north wing has forty"
    text = page + "\n\n" + "spaces for bicycles. " + "Words about pears and orchards. " * 20
    pdf = StructuredDocument("pdf", text, pages=(Page(1, 0, len(page)), Page(2, len(page) + 2, len(text))))
    across = splitter.split(pdf)
    assert any("garage beneath the north wing has forty\n\nspaces for bicycles" in p.text for p in across)


def test_fewest_packing_keeps_each_paragraph_of_a_third_of_half_the_window_alone(tokenizer):
    """The "fewest" packing closes a passage once it holds a third of half the window: such a paragraph is a passage
    of its own, shorter ones are joined until they reach it; "fill" packs as many as half the window holds."""
    sentences = [sentence for _, sentence in TOPICS]
    long_ones = [" ".join(sentences[i % 6 : i % 6 + 2]) for i in range(6)]  # 30 to 38 tokens: over a third of 64
    short = "See the intranet."  # 5 tokens: joined with the next
    paragraphs = [*long_ones[:3], short, *long_ones[3:]]
    doc = Document("plain", "\n\n".join(paragraphs))
    fewest = Splitter(tokenizer, 128, packing="fewest").split(doc)
    assert [p.text for p in fewest] == [*long_ones[:3], short + "\n\n" + long_ones[3], *long_ones[4:]]
    assert Splitter(tokenizer, 128).split(doc) == fewest  # the default
    filled = Splitter(tokenizer, 128, packing="fill").split(doc)
    assert len(filled) < len(fewest) and all(p.text.count("\n\n") <= 1 for p in filled)
    with pytest.raises(ValueError, match="packing must be"):
        Splitter(tokenizer, 128, packing="most")


def test_short_documents_stay_whole_and_pages_and_sections_come_from_extraction(tokenizer):
    splitter = Splitter(tokenizer, 256)
    short = Document("s", "A short note.", "Note")
    assert splitter.split(short) == [Passage(0, len(short.text), short.text)]
    assert encoding_texts(short, splitter.split(short)) == [short.text_for_encoding()]
    page_text = "Words about apples and orchards. " * 60
    text = page_text + page_text.replace("apples", "pears")
    half = len(page_text)
    doc = StructuredDocument(
        "pdf",
        text,
        "Fruit",
        pages=(Page(1, 0, half), Page(2, half, len(text))),
        sections=(Section(1, "Apples", 0, half), Section(1, "Pears", half, len(text))),
    )
    passages = splitter.split(doc)
    assert [p.page for p in passages][0] == 1 and passages[-1].page == 2
    assert passages[0].headings == ["Apples"] and passages[-1].headings == ["Pears"]
    assert any(p.start == half for p in passages)  # the section start is a cut
    assert passages[-1].context("Fruit") == "Fruit › Pears"


def test_one_word_longer_than_the_window_is_cut_and_still_fits(tokenizer):
    doc = Document("w", "ab-" * 1000)  # one "word" (no space) of 2,000 tokens
    passages = Splitter(tokenizer, 64).split(doc)
    assert "".join(p.text for p in passages) == doc.text and len(passages) > 1
    assert max(len(Splitter(tokenizer, 64).tokenizer.encode(t).ids) for t in encoding_texts(doc, passages)) <= 64


def _split(doc: Document, sizes: int) -> list[Passage]:
    step = len(doc.text) // sizes
    return [Passage(i * step, (i + 1) * step, doc.text[i * step : (i + 1) * step]) for i in range(sizes)]


def test_store_keeps_passages_under_their_document(tmp_path):
    collection = Collection.create(tmp_path / "c", model_name="m", model_fingerprint="f", dimension=4)
    rng = np.random.default_rng(0)
    long = Document("long", "alpha beta gamma delta " * 30, "Long one", {"kind": "report"})
    short = Document("short", "epsilon zeta", None, {"kind": "note"})
    splits = [_split(long, 3), [Passage(0, len(short.text), short.text)]]
    collection.upsert([long, short], rng.normal(size=(4, 4)), splits=splits)
    assert (len(collection), collection.passage_count()) == (2, 4)
    assert collection.get(["long"])[0] == long  # the whole document, stored once
    assert [d.id for d in collection.iter_documents()] == ["long", "short"]
    hits = collection.lexical_search(["gamma"], 10)[0]
    found = collection.passages([key for key, _ in hits])
    assert {p.doc_id for p in found.values()} == {"long"} and {p.count for p in found.values()} == {3}
    assert sorted(p.number for p in found.values()) == [0, 1, 2]
    assert collection.store.filter_ids({"kind": "report"}).size == 3  # passages carry the document's metadata
    # replacing a split document by a short one replaces every passage, in one transaction
    collection.upsert([Document("long", "now short")], rng.normal(size=(1, 4)), splits=[[Passage(0, 9, "now short")]])
    assert (len(collection), collection.passage_count(), len(collection.index)) == (2, 2, 2)
    assert collection.lexical_search(["gamma"], 10)[0] == []
    collection.upsert([long], rng.normal(size=(3, 4)), splits=[_split(long, 3)])
    collection.delete(["long"])
    assert (len(collection), collection.passage_count(), len(collection.index)) == (1, 1, 1)
    collection.commit()
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (manifest["document_count"], manifest["passage_count"]) == (1, 1)
    assert collection.stats()["passage_count"] == 1
    collection.close()
    reopened = Collection.open(tmp_path / "c")
    assert (len(reopened), reopened.passage_count()) == (1, 1)
    reopened.close()


def test_a_failed_upsert_leaves_the_old_passages(tmp_path):
    collection = Collection.create(tmp_path / "c", model_name="m", model_fingerprint="f", dimension=4)
    long = Document("long", "alpha beta gamma delta " * 30)
    collection.upsert([long], np.ones((3, 4)), splits=[_split(long, 3)])
    with pytest.raises(ValueError, match="3 passages but 2 embeddings"):
        collection.upsert([long], np.ones((2, 4)), splits=[_split(long, 3)])
    with pytest.raises(ValueError, match="NaN"):
        collection.upsert([long], np.full((3, 4), np.nan), splits=[_split(long, 3)])
    assert (len(collection), collection.passage_count()) == (1, 3)
    collection.close()


@pytest.mark.parametrize("name", ["plain", "sharded"])
def test_collections_written_before_passages_search_exactly_as_before(tmp_path, minilm, name):
    from twostage.engine import Engine

    expected = json.loads((FIXTURES / "expected.json").read_text())
    shutil.copytree(FIXTURES / name, tmp_path / name)
    with Engine.open(tmp_path / name, reranker="maxsim", encoder=minilm) as engine:
        assert (len(engine.collection), engine.collection.passage_count()) == (6, 6)
        for query, hits in expected["hits"][name].items():
            got = engine.search(query, candidate_depth=6, top_k=6).hits
            assert [h.doc_id for h in got] == [h[0] for h in hits]
            assert np.allclose([h.retrieval_score for h in got], [h[1] for h in hits], atol=2e-3)
            assert np.allclose([h.rerank_score for h in got], [h[2] for h in hits], atol=2e-3)
            assert all(h.passage.count == 1 and h.passage.end == len(h.text) for h in got)
        for query, hits in expected["hits"][name + "-hybrid"].items():
            got = engine.search(query, candidate_depth=6, rerank=False, first_stage="hybrid").hits
            assert [h.doc_id for h in got] == [h[0] for h in hits]
        # the old collection takes long documents now: split, and replaced or deleted with all their passages
        engine.add([Document("cats", handbook(1), "Handbook")])
        assert (len(engine.collection), engine.collection.passage_count()) == (
            6,
            6 + len(splitter_for(minilm).split(Document("cats", handbook(1), "Handbook"))) - 1,
        )
        engine.delete(["cats"])
        assert (len(engine.collection), engine.collection.passage_count()) == (5, 5)


@pytest.fixture(scope="module")
def handbook_engine(tmp_path_factory, minilm):
    from twostage.engine import Engine

    engine = Engine.create(tmp_path_factory.mktemp("hb") / "c", reranker="maxsim", encoder=minilm)
    docs = [Document("handbook", handbook(), "Staff handbook")]
    docs += [Document(f"note{i}", f"{title}: {sentence}", title) for i, (title, sentence) in enumerate(TOPICS)]
    docs += [Document("trains", "Trains leave the central station every ten minutes for the airport.", "Trains")]
    report = engine.add(docs)
    assert report.split == 1 and report.truncated == 0 and report.passages > len(docs)
    yield engine
    engine.close()


def test_a_sentence_deep_in_a_long_document_is_found_with_its_passage(handbook_engine):
    text = handbook()
    for rerank in (False, True):
        result = handbook_engine.search("where can I leave my bike at work", rerank=rerank, top_k=5)
        top = result.hits[0]
        assert top.doc_id == "handbook"
        assert ANSWER in top.text and len(top.text) < len(text) / 5  # the passage, never the whole handbook
        assert text[top.passage.start : top.passage.end] == top.text
        assert top.passage.headings[-1] == "Facilities" and top.passage.count > 5
        assert top.passage.score == top.score
        assert len({h.doc_id for h in result.hits}) == len(result.hits)  # one hit per document
        payload = top.to_dict()["passage"]
        assert payload["start"] == top.passage.start and payload["text"] == top.text and "key" not in payload


def test_group_by_passage_returns_passages(handbook_engine):
    hits = handbook_engine.search("office hours and holidays", rerank=False, top_k=10, group_by="passage").hits
    assert sum(h.doc_id == "handbook" for h in hits) > 1
    assert len({(h.doc_id, h.passage.number) for h in hits}) == len(hits)
    from twostage.errors import UsageError

    with pytest.raises(UsageError, match="group_by"):
        handbook_engine.search("x", group_by="chapter")


def test_explain_aligns_query_words_with_passage_words(handbook_engine):
    hits = handbook_engine.search("bicycles parking garage", rerank=False, top_k=3, explain=True).hits
    top = next(h for h in hits if h.doc_id == "handbook")
    explain = top.passage.explain
    words = {m["query"]: m for m in explain["maxsim"]}
    assert words["garage"]["passage"] == "garage" and words["garage"]["similarity"] > 0.5
    start, end = words["garage"]["start"], words["garage"]["end"]
    assert top.text[start:end] == "garage"
    bm25 = {m["term"]: m["words"] for m in explain["bm25"]}
    assert [w["text"] for w in bm25["bicycles"]] == ["bicycles"] and "parking" in bm25
    assert all(top.text[w["start"] : w["end"]] == w["text"] for words in bm25.values() for w in words)


def test_cli_shows_the_passage_with_query_words_emphasised(handbook_engine, capsys):
    from twostage.hit_text import format_hits

    result = handbook_engine.search("bicycle parking garage", rerank=False, top_k=3, explain=True)
    table = format_hits(result)
    assert re.search(r"\[passage \d+/\d+, Staff handbook › Facilities\]", table)
    assert "*garage*" in table and "*bicycles*" in table
    assert "maxsim: " in table and "bm25: " in table


def test_split_batch_gives_documents_back_once_all_their_passages_are_encoded(tokenizer):
    """What Ray indexing does with actors' rows arriving in any order (twostage.distributed)."""
    from twostage.ingest.passages import SplitBatch

    docs = [Document("long", handbook(1), "Handbook"), Document("short", "A short note.")]
    batch = SplitBatch(docs, Splitter(tokenizer, 128))
    rows = len(batch.texts)
    assert rows == len(batch.splits[0]) + 1 and batch.owner[-1] == 1
    vectors = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    assert batch.arrived([rows - 1], vectors[[rows - 1]], None) == [1]  # the short one is complete at once
    got, got_vectors, tokens, splits, texts = batch.ready([1])
    assert [d.id for d in got] == ["short"] and tokens is None and got_vectors.tolist() == [vectors[-1].tolist()]
    later = list(range(rows - 2, -1, -1))  # the long one's rows, last first
    assert batch.arrived(later[:-1], vectors[later[:-1]], None) == []
    assert batch.arrived(later[-1:], vectors[later[-1:]], None) == [0]
    got, got_vectors, _, splits, texts = batch.ready([0])
    assert got_vectors.tolist() == vectors[: rows - 1].tolist()  # in passage order
    assert splits == [batch.splits[0]] and texts == encoding_texts(docs[0], batch.splits[0])


def test_passage_tokens_caps_a_cut_documents_passages_while_a_document_that_fits_stays_whole(tokenizer):
    """``passage_tokens`` (bench_documents.py --sizes) caps a cut document's passages; a document that fits the window
    stays one passage whatever the cap, so a collection of short passages is stored exactly as without it."""
    from twostage.ingest.passages import PASSAGE_TOKENS

    assert PASSAGE_TOKENS is None  # the default: passages fill the window
    capped = Splitter(tokenizer, 256, passage_tokens=128)
    copy = capped.tokenizer
    fits = Document("fits", "Words about apples and orchards in the valley. " * 18)  # about 170 tokens
    assert 128 < len(copy.encode(fits.text).ids) <= 256
    assert len(capped.split(fits)) == 1
    long = Document("long", handbook(), "Handbook")
    passages = capped.split(long)
    assert max(len(copy.encode(t).ids) for t in encoding_texts(long, passages)) <= 128
    window_sized = Splitter(tokenizer, 256).split(long)
    assert len(window_sized) < len(passages)
    assert max(len(copy.encode(t).ids) for t in encoding_texts(long, window_sized)) > 128


def test_query_words_are_emphasised_in_their_forms_not_as_any_prefix():
    from twostage.hit_text import query_word_spans

    text = "The canteen indexes bicycles; a writer waited while the index was indexing."
    found = [text[a:b] for a, b in query_word_spans(text, "can a bicycle index wait")]
    assert found == ["indexes", "bicycles", "waited", "index", "indexing"]  # "can" does not find "canteen"
