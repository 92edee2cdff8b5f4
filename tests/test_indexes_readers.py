"""Corpus readers: every format, field guessing, and a clear file/line/field error for each kind of bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from twostage.indexes.documents import Document
from twostage.indexes.errors import CorpusError
from twostage.indexes.readers import count_corpus, read_corpus

RECORDS = [
    {"id": "d1", "title": "One", "text": "first text", "lang": "en", "year": 2020},
    {"id": "d2", "title": "Two", "text": "second text", "lang": "de", "year": 2021},
    {"id": "d3", "title": "Three", "text": "third text", "lang": "en", "year": 2022},
]


def _jsonl(path: Path, records: list, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as out:
        for record in records:
            out.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def _ids(docs) -> list[str]:
    return [d.id for d in docs]


def _error(source, **kwargs) -> str:
    with pytest.raises(CorpusError) as info:
        list(read_corpus(source, **kwargs))
    return str(info.value)


# ---------------------------------------------------------------------------- formats
def test_jsonl_fields_title_and_metadata(tmp_path):
    docs = list(read_corpus(_jsonl(tmp_path / "c.jsonl", RECORDS)))
    assert docs[0] == Document("d1", "first text", "One", {"lang": "en", "year": 2020})
    assert _ids(docs) == ["d1", "d2", "d3"]
    assert count_corpus(tmp_path / "c.jsonl") == 3


def test_jsonl_gz_and_guessed_beir_fields(tmp_path):
    records = [
        {"_id": 7, "contents": "seven", "metadata": {"url": "u"}},
        {"_id": 8, "contents": "eight", "tags": ["a", "b"]},
    ]
    path = _jsonl(tmp_path / "c.jsonl.gz", records, opener=gzip.open)
    docs = list(read_corpus(path))
    assert docs == [Document("7", "seven", None, {"url": "u"}), Document("8", "eight", None, {"tags": ["a", "b"]})]
    assert count_corpus(path) is None  # would need decompressing


def test_explicit_fields_and_metadata_selection(tmp_path):
    path = _jsonl(tmp_path / "c.json", [{"key": "a", "body2": "hello", "x": 1, "y": 2}])
    docs = list(read_corpus(path, id_field="key", text_field="body2", metadata_fields=["y"]))
    assert docs == [Document("a", "hello", None, {"y": 2})]


def test_json_array(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    assert _ids(read_corpus(path)) == ["d1", "d2", "d3"]


def test_tsv_with_header_and_gz(tmp_path):
    text = "docid\ttitle\ttext\tlang\nd1\tOne\tfirst text\ten\nd2\t\tsecond text\tde\n"
    (tmp_path / "c.tsv").write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "c.tsv.gz", "wt", encoding="utf-8") as out:
        out.write(text)
    for name in ("c.tsv", "c.tsv.gz"):
        docs = list(read_corpus(tmp_path / name))
        assert docs == [
            Document("d1", "first text", "One", {"lang": "en"}),
            Document("d2", "second text", None, {"lang": "de"}),
        ]
    assert count_corpus(tmp_path / "c.tsv") == 2


def test_headerless_msmarco_tsv(tmp_path):
    (tmp_path / "collection.tsv").write_text('0\tThe "quoted" passage\n1\tAnother passage\n', encoding="utf-8")
    docs = list(read_corpus(tmp_path / "collection.tsv"))
    assert docs == [Document("0", 'The "quoted" passage'), Document("1", "Another passage")]
    assert count_corpus(tmp_path / "collection.tsv") == 2
    (tmp_path / "titled.tsv").write_text("10\tA title\tA body\n", encoding="utf-8")
    assert list(read_corpus(tmp_path / "titled.tsv")) == [Document("10", "A body", "A title")]


def test_csv_with_quotes_and_newlines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text,year\nd1,"hello, world",2020\nd2,"two\nlines",2021\n', encoding="utf-8")
    docs = list(read_corpus(path))
    assert docs == [
        Document("d1", "hello, world", None, {"year": "2020"}),
        Document("d2", "two\nlines", None, {"year": "2021"}),
    ]


def test_parquet(tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "doc_id": [1, 2],
            "passage": ["p one", "p two"],
            "score": [0.5, None],
            "when": [datetime.date(2020, 1, 2), datetime.date(2021, 3, 4)],
        }
    )
    pq.write_table(table, tmp_path / "c.parquet")
    docs = list(read_corpus(tmp_path / "c.parquet"))
    assert docs == [
        Document("1", "p one", None, {"score": 0.5, "when": "2020-01-02"}),
        Document("2", "p two", None, {"score": None, "when": "2021-03-04"}),
    ]
    assert count_corpus(tmp_path / "c.parquet") == 2


def test_beir_directory(tmp_path):
    _jsonl(tmp_path / "corpus.jsonl", RECORDS)
    assert _ids(read_corpus(tmp_path)) == ["d1", "d2", "d3"]


def test_hugging_face_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"id": 1, "text": "a"}, {"id": 2, "text": "b"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert _ids(read_corpus("someone/corpus", split="corpus")) == ["1", "2"]
    assert calls == [("someone/corpus", None, "corpus")]
    assert count_corpus("someone/corpus") is None


def test_missing_path_that_is_no_dataset(monkeypatch):
    import datasets

    def fail(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nope/nothing' on the Hub\n(offline)")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    message = _error("nope/nothing")
    assert "nope/nothing" in message and "no such file" in message and "Hugging Face" in message
    assert "Couldn't reach" in message and "\n" not in message
    assert "no such file" in _error("missing/corpus.jsonl")  # a file suffix: not tried as a dataset


# ---------------------------------------------------------------------------- bad input
def test_malformed_json_names_line(tmp_path):
    path = _jsonl(tmp_path / "corpus.jsonl", [RECORDS[0], '{"id": "x", "text": ', RECORDS[1]])
    message = _error(path)
    assert message.startswith(f"{path}, line 2: malformed JSON")


def test_json_line_that_is_not_an_object(tmp_path):
    path = _jsonl(tmp_path / "corpus.jsonl", [RECORDS[0], "[1, 2]"])
    assert _error(path) == f"{path}, line 2: expected a JSON object, got a list"


def test_missing_text_field(tmp_path):
    path = _jsonl(tmp_path / "corpus.jsonl", [RECORDS[0], {"id": "x", "title": "no text"}])
    assert _error(path) == f"{path}, line 2, field 'text': missing text"
    path = _jsonl(tmp_path / "other.jsonl", [{"id": "x", "words": "w"}])
    message = _error(path)
    assert message.startswith(f"{path}, line 1: no text field") and "words" in message


def test_empty_text(tmp_path):
    path = _jsonl(tmp_path / "corpus.jsonl", RECORDS[:2] + [{"id": "x", "text": "   "}])
    assert _error(path) == f"{path}, line 3, field 'text': empty text"


@pytest.mark.parametrize("value, kind", [(5, "a number"), (["a"], "a list")])
def test_text_and_title_must_be_strings(tmp_path, value, kind):
    path = _jsonl(tmp_path / "corpus.jsonl", [RECORDS[0], {"id": "x", "text": value}])
    assert _error(path) == f"{path}, line 2, field 'text': text must be a string, got {kind}"
    path = _jsonl(tmp_path / "titles.jsonl", [{"id": "x", "title": value, "text": "ok"}])
    assert _error(path) == f"{path}, line 1, field 'title': title must be a string, got {kind}"


def test_missing_id(tmp_path):
    path = _jsonl(tmp_path / "corpus.jsonl", [RECORDS[0], {"text": "no id"}])
    assert _error(path) == f"{path}, line 2, field 'id': missing id"
    path = _jsonl(tmp_path / "none.jsonl", [{"text": "no id"}])
    assert _error(path).startswith(f"{path}, line 1: no id field")


def test_duplicate_id_names_both_lines(tmp_path):
    path = _jsonl(tmp_path / "corpus.jsonl", RECORDS + [{"id": "d2", "text": "again"}])
    assert _error(path) == f"{path}, line 4, field 'id': duplicate id 'd2' (first seen on line 2)"


def test_non_utf8_names_line_and_field(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9"}\n')
    message = _error(path)
    assert message.startswith(f"{path}, line 2, field 'text': not valid UTF-8 (byte 0xe9")
    tsv = tmp_path / "corpus.tsv"
    tsv.write_bytes(b"id\ttitle\ttext\n1\tT\tok\n2\tbad \xff title\tok\n")
    assert _error(tsv).startswith(f"{tsv}, line 3, field 'title': not valid UTF-8 (byte 0xff")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    assert _error(tmp_path / "empty.jsonl") == f"{tmp_path / 'empty.jsonl'}: no documents found: the corpus is empty"
    (tmp_path / "header.tsv").write_text("id\ttext\n", encoding="utf-8")
    assert "no documents found" in _error(tmp_path / "header.tsv")


def test_tsv_and_csv_row_errors(tmp_path):
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("1\tfirst\n2\tsecond\textra\n", encoding="utf-8")
    assert _error(tsv).startswith(f"{tsv}, line 2: expected 2 tab-separated columns (id, text), found 3")
    tsv.write_text("1\t2\t3\t4\n", encoding="utf-8")
    assert "no header line" in _error(tsv)
    csv_path = tmp_path / "corpus.csv"
    csv_path.write_text('id,text\n1,"ok"\n2,""\n', encoding="utf-8")
    assert _error(csv_path) == f"{csv_path}, line 3, field 'text': empty text"


def test_csv_needs_a_header_and_well_formed_quotes(tmp_path):
    """Headerless files are MS MARCO's TSV layout only: a CSV whose first line names no known field is refused rather
    than read as a document; a quote left open is an error, not a field that swallows the rest of the file."""
    csv_path = tmp_path / "corpus.csv"
    csv_path.write_text("ident,body2\nn1,hello\n", encoding="utf-8")
    assert _error(csv_path).startswith(f"{csv_path}, line 1: the first line (ident, body2) is not a header")
    csv_path.write_text('id,text\nn1,"unterminated\n', encoding="utf-8")
    assert _error(csv_path).startswith(f"{csv_path}, line 2: malformed CSV")


def test_ids_and_strings_every_format_refuses(tmp_path):
    """Ids with whitespace or control characters (TREC runs cannot hold them) and lone surrogates anywhere."""
    path = tmp_path / "c.jsonl"
    for record, expected in [
        ({"id": "n1 n2", "text": "x"}, "line 1, field 'id': id 'n1 n2' holds whitespace"),
        ({"id": "a\tb", "text": "x"}, "field 'id'"),
        ({"id": "d\ud800", "text": "x"}, "field 'id': not valid Unicode: a lone surrogate ('\\ud800')"),
        ({"id": "d", "text": "x", "title": "t\udc00"}, "field 'title': not valid Unicode"),
        ({"id": "d", "text": "x", "metadata": {"k\udfff": "v"}}, "not valid Unicode"),
    ]:
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        assert expected in _error(path), record
    tsv = tmp_path / "c.tsv"
    tsv.write_text("id\ttext\nok\tfine\n\u00a0x\tbad id\n", encoding="utf-8")
    assert _error(tsv).startswith(f"{tsv}, line 3, field 'id'")


def test_parquet_row_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b", "a"], "text": ["x", "y", "z"]}), tmp_path / "c.parquet")
    assert (
        _error(tmp_path / "c.parquet")
        == f"{tmp_path / 'c.parquet'}, line 3, field 'id': duplicate id 'a' (first seen on line 1)"
    )
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    assert _error(tmp_path / "broken.parquet").startswith(f"{tmp_path / 'broken.parquet'}: cannot read Parquet")


def test_unsupported_format_and_given_field_not_found(tmp_path):
    (tmp_path / "c.xml").write_text("<x/>", encoding="utf-8")
    assert "unsupported corpus format" in _error(tmp_path / "c.xml")
    path = _jsonl(tmp_path / "c.jsonl", RECORDS)
    assert (
        _error(path, text_field="body")
        == f"{path}, line 1, field 'body': text field 'body' not found (fields: id, title, text, lang, year)"
    )


def test_reading_streams(tmp_path):
    """A bad line far down does not stop the first documents from being read: the reader is lazy."""
    path = _jsonl(tmp_path / "c.jsonl", RECORDS + ["{bad"])
    docs = read_corpus(path)
    assert next(docs).id == "d1"
    with pytest.raises(CorpusError, match="line 4"):
        list(docs)
