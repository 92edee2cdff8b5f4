"""TREC qrels/run/query files: reading, writing, gzip, and errors that name the file and line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from twostage.eval.errors import DatasetError, EvalInputError
from twostage.eval.trec import read_qrels, read_queries_tsv, read_run, read_run_with_tag, write_run


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["qrels.txt", "qrels.txt.gz"])
def test_read_qrels(tmp_path, name):
    path = write(tmp_path / name, "# comment\n1 0 d1 2\n1 0 d2 0\n\n2\tQ0\td1\t1\r\n1 0 d1 2\n")
    assert read_qrels(path) == {"1": {"d1": 2, "d2": 0}, "2": {"d1": 1}}


def test_qrels_with_too_few_fields_names_file_and_line(tmp_path):
    path = write(tmp_path / "qrels.txt", "1 0 d1 1\n1 0 d2 0\n1 0 d3\n")
    with pytest.raises(EvalInputError) as info:
        read_qrels(path)
    assert str(info.value) == f"{path}, line 3: expected 4 fields (qid 0 docid label), got 3"
    assert (info.value.path, info.value.line) == (str(path), 3)


def test_qrels_with_non_integer_label_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "qrels.txt", "1 0 d1 1\n1 0 d2 high\n")
    with pytest.raises(EvalInputError, match=r"qrels.txt, line 2, field 4 \(label\): expected an integer.*'high'"):
        read_qrels(path)


def test_qrels_conflicting_duplicate_names_both_lines(tmp_path):
    path = write(tmp_path / "qrels.txt", "1 0 d1 1\n1 0 d2 0\n1 0 d1 2\n")
    with pytest.raises(EvalInputError, match=r"qrels.txt, line 3: .*d1.*judged 2 here but 1 on line 1"):
        read_qrels(path)


RUN_TEXT = "1 Q0 d1 1 3.5 bm25\n1 Q0 d2 2 2.25 bm25\n2 Q0 d9 1 -1e-3 bm25\n"


@pytest.mark.parametrize("name", ["run.trec", "run.trec.gz"])
def test_read_run_and_tag(tmp_path, name):
    path = write(tmp_path / name, RUN_TEXT)
    run, tag = read_run_with_tag(path)
    assert run == {"1": {"d1": 3.5, "d2": 2.25}, "2": {"d9": -0.001}}
    assert tag == "bm25"
    assert read_run(path) == run


def test_run_duplicate_document_names_both_lines(tmp_path):
    path = write(tmp_path / "run.trec", RUN_TEXT + "1 Q0 d1 3 9.0 bm25\n")
    with pytest.raises(EvalInputError) as info:
        read_run(path)
    assert str(info.value) == f"{path}, line 4: duplicate document d1 for query 1 (first on line 1)"
    assert read_run(path, on_duplicate="first")["1"]["d1"] == 3.5
    assert read_run(path, on_duplicate="max")["1"]["d1"] == 9.0
    with pytest.raises(ValueError):
        read_run(path, on_duplicate="last")


def test_run_with_five_fields_names_file_and_line(tmp_path):
    path = write(tmp_path / "run.trec", "1 Q0 d1 1 3.5 bm25\n1 Q0 d2 2 2.0\n")
    with pytest.raises(
        EvalInputError, match=r"run.trec, line 2: expected 6 fields \(qid Q0 docid rank score tag\), got 5"
    ):
        read_run(path)


@pytest.mark.parametrize("score", ["abc", "nan"])
def test_run_with_bad_score_names_line(tmp_path, score):
    path = write(tmp_path / "run.trec", f"1 Q0 d1 1 3.5 t\n1 Q0 d2 2 {score} t\n")
    with pytest.raises(EvalInputError, match=r"run.trec, line 2, field 5 \(score\)"):
        read_run(path)


@pytest.mark.parametrize("name", ["out.trec", "out.trec.gz"])
def test_write_run_orders_as_trec_eval_and_round_trips(tmp_path, name):
    run = {"2": {"a": 1.0, "b": 1.0, "c": 0.1 + 0.2}, "1": {"x": -2.0, "y": 7.0}}
    path = tmp_path / name
    write_run(run, path, tag="mine")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as handle:
        lines = [line.split() for line in handle]
    assert [(l[0], l[2], l[3]) for l in lines] == [
        ("2", "b", "1"),
        ("2", "a", "2"),
        ("2", "c", "3"),
        ("1", "y", "1"),
        ("1", "x", "2"),
    ]
    assert {l[1] for l in lines} == {"Q0"} and {l[5] for l in lines} == {"mine"}
    assert read_run(path) == run  # scores written exactly


def test_write_run_depth_and_bad_ids(tmp_path):
    write_run({"1": {f"d{i}": float(i) for i in range(10)}}, tmp_path / "r.trec", depth=3)
    assert list(read_run(tmp_path / "r.trec")["1"]) == ["d9", "d8", "d7"]
    with pytest.raises(EvalInputError, match="whitespace"):
        write_run({"1": {"bad id": 1.0}}, tmp_path / "bad.trec")
    with pytest.raises(EvalInputError, match="whitespace"):
        write_run({"1": {"d": 1.0}}, tmp_path / "bad.trec", tag="my run")


@pytest.mark.parametrize("name", ["queries.tsv", "queries.tsv.gz"])
def test_read_queries_tsv(tmp_path, name):
    path = write(tmp_path / name, "1\twhat is a\ttab\n2\thello world\r\n\n")
    assert read_queries_tsv(path) == {"1": "what is a\ttab", "2": "hello world"}


def test_queries_without_tab_names_line(tmp_path):
    path = write(tmp_path / "queries.tsv", "1\tok\n2 no tab here\n")
    with pytest.raises(EvalInputError, match=r"queries.tsv, line 2: expected 'qid<TAB>query text'"):
        read_queries_tsv(path)


def test_error_classes():
    assert issubclass(EvalInputError, ValueError) and issubclass(DatasetError, EvalInputError)
    assert str(EvalInputError("plain")) == "plain"
    assert str(EvalInputError("bad", path="f.txt", line=3, field="2 (x)")) == "f.txt, line 3, field 2 (x): bad"
