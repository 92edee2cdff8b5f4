"""Dataset loading: the three folder layouts (gzip too), the shortcut search path, clear errors, hub offline."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from twostage.eval.datasets import Dataset, dataset_search_path, detect_format, load_dataset
from twostage.eval.errors import DatasetError, EvalInputError


def write(path: Path, text: str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def make_uniform(folder: Path, gz: bool = False) -> Path:
    write(folder / "queries.tsv", "1\tfirst query\n2\tsecond query\n3\tunjudged query\n", gz)
    write(folder / "qrels.txt", "1 0 d1 2\n1 0 d2 0\n2 0 d3 1\n", gz)
    write(
        folder / "corpus.jsonl",
        jsonl([{"id": "d1", "text": "one"}, {"id": "d2", "title": "T", "text": "two"}, {"id": "d3", "text": "three"}]),
        gz,
    )
    write(folder / "runs" / "bm25.trec", "1 Q0 d1 1 2.0 bm25\n", gz)
    return folder


def make_beir(folder: Path, gz: bool = False) -> Path:
    write(
        folder / "corpus.jsonl",
        jsonl([{"_id": "d1", "title": "Title 1", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}]),
        gz,
    )
    write(
        folder / "queries.jsonl",
        jsonl([{"_id": "q1", "text": "a question", "metadata": {}}, {"_id": "q2", "text": "train question"}]),
        gz,
    )
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n", gz)
    write(folder / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq2\td2\t1\n", gz)
    return folder


def make_msmarco(folder: Path, gz: bool = False) -> Path:
    write(folder / "collection.tsv", "0\tpassage zero\n1\tpassage one\n", gz)
    write(folder / "queries.dev.tsv", "100\tdev query\n101\tanother\n", gz)
    write(folder / "qrels.dev.tsv", "100\t0\t1\t1\n", gz)
    write(folder / "queries.train.tsv", "200\ttrain query\n", gz)
    write(folder / "qrels.train.tsv", "200\t0\t0\t1\n", gz)
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_uniform_folder(tmp_path, gz):
    ds = load_dataset(make_uniform(tmp_path / "mini", gz))
    assert isinstance(ds, Dataset) and ds.name == "mini" and ds.source.startswith("uniform")
    assert ds.queries == {"1": "first query", "2": "second query"}  # only judged queries
    assert ds.qrels == {"1": {"d1": 2, "d2": 0}, "2": {"d3": 1}}
    assert list(ds.runs) == ["bm25"] and ds.runs["bm25"].is_file()
    assert list(ds.iter_corpus()) == [
        {"id": "d1", "title": "", "text": "one"},
        {"id": "d2", "title": "T", "text": "two"},
        {"id": "d3", "title": "", "text": "three"},
    ]


@pytest.mark.parametrize("gz", [False, True])
def test_beir_folder(tmp_path, gz):
    folder = make_beir(tmp_path / "scifact", gz)
    ds = load_dataset(folder)
    assert detect_format(folder) == "beir" and "split test" in ds.source
    assert ds.queries == {"q1": "a question"} and ds.qrels == {"q1": {"d1": 1, "d2": 0}}
    assert list(ds.iter_corpus()) == [
        {"id": "d1", "title": "Title 1", "text": "one"},
        {"id": "d2", "title": "", "text": "two"},
    ]
    assert load_dataset(folder, split="train").queries == {"q2": "train question"}
    with pytest.raises(DatasetError, match=r"missing qrels/dev.tsv.*splits present: test, train"):
        load_dataset(folder, split="dev")


@pytest.mark.parametrize("gz", [False, True])
def test_msmarco_folder(tmp_path, gz):
    folder = make_msmarco(tmp_path / "msmarco", gz)
    ds = load_dataset(folder)
    assert detect_format(folder) == "msmarco" and "split dev" in ds.source
    assert ds.queries == {"100": "dev query"} and ds.qrels == {"100": {"1": 1}}
    assert [d["id"] for d in ds.iter_corpus()] == ["0", "1"]
    assert load_dataset(folder, split="train").qrels == {"200": {"0": 1}}


def test_folder_missing_a_file_names_folder_and_file(tmp_path):
    folder = make_uniform(tmp_path / "mini")
    (folder / "qrels.txt").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    assert str(folder) in str(info.value) and "qrels.txt" in str(info.value)
    folder = make_msmarco(tmp_path / "ms")
    (folder / "queries.dev.tsv").unlink()
    with pytest.raises(DatasetError, match=r"ms is missing queries\.dev\.tsv"):
        load_dataset(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is not a dataset folder"):
        load_dataset(tmp_path / "empty")


def test_bad_line_in_a_dataset_file_names_file_and_line(tmp_path):
    folder = make_uniform(tmp_path / "mini")
    write(folder / "qrels.txt", "1 0 d1 2\n1 0 d2\n")
    with pytest.raises(EvalInputError, match=r"qrels.txt, line 2: expected 4 fields"):
        load_dataset(folder)
    folder = make_beir(tmp_path / "beir")
    write(folder / "corpus.jsonl", '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n')
    with pytest.raises(EvalInputError, match=r"corpus.jsonl, line 2: invalid JSON"):
        list(load_dataset(folder).iter_corpus())


def test_judged_query_without_text_is_an_error(tmp_path):
    folder = make_uniform(tmp_path / "mini")
    write(folder / "qrels.txt", "1 0 d1 2\n7 0 d1 1\n")
    with pytest.raises(DatasetError, match=r"1 judged queries have no text in .*queries.tsv"):
        load_dataset(folder)


def test_dataset_without_corpus(tmp_path):
    folder = make_uniform(tmp_path / "queries-only")
    (folder / "corpus.jsonl").unlink()
    ds = load_dataset(folder)
    assert ds.corpus_path is None
    with pytest.raises(DatasetError, match="has no corpus"):
        next(ds.iter_corpus())


def test_search_path_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TWOSTAGE_DATA", str(tmp_path / "env"))
    assert dataset_search_path(tmp_path / "arg") == [tmp_path / "arg", tmp_path / "env", tmp_path / "data"]
    monkeypatch.delenv("TWOSTAGE_DATA")
    assert dataset_search_path() == [tmp_path / "data"]  # nothing outside the working directory


def test_shortcut_resolves_through_data_dir_then_env_then_cwd(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    make_uniform(tmp_path / "arg" / "mini")
    make_beir(tmp_path / "env" / "mini")
    make_msmarco(work / "data" / "mini")
    monkeypatch.setenv("TWOSTAGE_DATA", str(tmp_path / "env"))
    assert load_dataset("mini", data_dir=tmp_path / "arg").source.startswith("uniform")
    assert load_dataset("mini").source.startswith("BEIR")
    monkeypatch.delenv("TWOSTAGE_DATA")
    assert load_dataset("mini").source.startswith("MS MARCO")


# A child process that cannot reach the network: every non-loopback connect and name lookup fails.
BLOCKED_NETWORK = """
import json, socket, sys, time
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
LOCAL = ("127.0.0.1", "::1", "localhost")
def connect(self, address):
    if isinstance(address, tuple) and address[0] not in LOCAL:
        raise OSError(101, "Network is unreachable (blocked by the test)")
    return _connect(self, address)
def getaddrinfo(host, *args, **kwargs):
    if host not in LOCAL:
        raise socket.gaierror(-2, "Name or service not known (blocked by the test)")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
from twostage.eval.datasets import load_dataset
from twostage.eval.errors import DatasetError
start = time.monotonic()
try:
    load_dataset("BeIR/scifact")
    print(json.dumps({"error": None}))
except DatasetError as exc:
    print(json.dumps({"error": str(exc), "seconds": time.monotonic() - start}))
"""


@pytest.mark.parametrize("hub_offline", [False, True], ids=["network-blocked", "HF_HUB_OFFLINE"])
def test_hub_dataset_offline_fails_fast_and_clearly(tmp_path, hub_offline):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TWOSTAGE_DATA")
    }
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"))
    if hub_offline:
        env["HF_HUB_OFFLINE"] = "1"
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", BLOCKED_NETWORK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    answer = json.loads(child.stdout.strip().splitlines()[-1])
    message = answer["error"]
    assert message is not None
    assert "could not load dataset 'BeIR/scifact' from the Hugging Face hub: offline / unreachable" in message
    assert "pass a local dataset folder" in message and "not on the search path" in message
    assert answer["seconds"] < 8 and time.monotonic() - started < 30


def shared_folder(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is not present (evaluation data lives beside the repo in ../shared/data)")
    return path


def test_shared_datasets_load_by_name():
    shared_folder("msmarco-dl20")
    ds = load_dataset("msmarco-dl20", data_dir=SHARED_DATA)
    assert len(ds.queries) == len(ds.qrels) == 54
    assert set(ds.runs) >= {"bm25", "bm25_rm3", "d_bert_kd_tasb", "open_ai_ada2", "splade_p_p_ensemble_distil"}
    first = next(ds.iter_corpus())
    assert set(first) == {"id", "title", "text"} and first["text"]
    shared_folder("cacm")
    cacm = load_dataset("cacm", data_dir=SHARED_DATA)
    assert len(cacm.queries) == 52 and cacm.corpus_path is not None


def test_hub_corpus_rows_become_documents():
    import datasets

    rows = datasets.Dataset.from_list(
        [{"_id": "d1", "title": None, "text": "one"}, {"_id": "d2", "title": "T", "text": "two"}]
    )
    ds = Dataset("hub", {}, {}, None, {}, "test", hub_corpus=rows)
    assert list(ds.iter_corpus()) == [
        {"id": "d1", "title": "", "text": "one"},
        {"id": "d2", "title": "T", "text": "two"},
    ]
