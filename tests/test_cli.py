"""The ``twostage`` command line on real files: in-process through ``main(argv)``, and once as a real subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES

from twostage.cli import main


def twostage(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI in this process (a subprocess per call would re-import torch each time), capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_console_script_reports_errors_without_traceback(tmp_path):
    """The real entry point, as a user runs it: a bad corpus is one line on stderr and exit status 2."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n', encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "twostage.cli", "index", str(bad), "--index", str(tmp_path / "c"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "bad.jsonl, line 2" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def example_index(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "example-index"
    done = twostage("index", str(EXAMPLES / "corpus.jsonl"), "--index", str(directory), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "100 added" in done.stdout
    return directory


def test_index_writes_a_collection_directory(example_index):
    manifest = json.loads((example_index / "manifest.json").read_text())
    for key in ("format_version", "model_name", "model_fingerprint", "dimension", "metric", "normalized", "index_type"):
        assert key in manifest
    assert manifest["dimension"] == 384 and manifest["document_count"] == 100
    assert (example_index / "documents.sqlite").exists() and (example_index / "vectors.faiss").exists()
    info = twostage("info", str(example_index), "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["document_count"] == 100


def test_search_table_and_json(example_index):
    table = twostage("search", str(example_index), "How many people live in Berlin?", "--no-rerank", "--top", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "doc", "id"]
    assert "cities-01" in lines[1]
    out = twostage("search", str(example_index), "How many people live in Berlin?", "--json", "--k", "20", "--top", "5")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert len(payload["hits"]) == 5 and payload["candidates"] == 20
    # Offline, the default cross-encoder falls back to late interaction and says so in one line.
    assert payload["hits"][0]["rerank_score"] is not None
    assert "maxsim" in out.stderr.lower()


def test_filter_and_batch_run(example_index, tmp_path):
    out = twostage("search", str(example_index), "famous museum", "--no-rerank", "--json", "--filter", "topic=cities")
    assert out.returncode == 0, out.stderr
    assert {h["metadata"]["topic"] for h in json.loads(out.stdout)["hits"]} == {"cities"}
    run = tmp_path / "run.trec"
    done = twostage(
        "search", str(example_index), "--queries", str(EXAMPLES / "queries.tsv"), "--run", str(run), "--no-rerank"
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in run.read_text().splitlines()]
    assert len({r[0] for r in rows}) == 10 and all(len(r) == 6 and r[1] == "Q0" for r in rows)


def test_add_delete_on_existing_collection(example_index, tmp_path):
    extra = tmp_path / "extra.tsv"
    extra.write_text("id\ttext\nnew-1\tThe Rhine flows through Basel, Cologne and Rotterdam.\n", encoding="utf-8")
    done = twostage("add", str(example_index), str(extra), "--quiet")
    assert done.returncode == 0 and "1 added" in done.stdout, done.stderr
    done = twostage("delete", str(example_index), "new-1", "cities-01")
    assert done.returncode == 0, done.stderr
    out = twostage(
        "search",
        str(example_index),
        "How many people live in Berlin?",
        "--no-rerank",
        "--json",
        "--k",
        "200",
        "--top",
        "200",
    )
    ids = [h["doc_id"] for h in json.loads(out.stdout)["hits"]]
    assert "cities-01" not in ids and "new-1" not in ids and len(ids) == 99


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n', "line 2"),
        ('{"id": "a", "text": "fine"}\n{"id": "b", "body": "x"}\n', "line 2"),
        ('{"id": "a", "text": "fine"}\n{"id": "a", "text": "again"}\n', "line 2"),
        ('{"id": "a", "text": 42}\n', "'text'"),
        ("", "empty"),
        # a lone surrogate (JSON can escape one, UTF-8 cannot store it) and an id no TREC run can hold
        (
            '{"id": "a", "text": "fine"}\n{"id": "b", "text": "ok \\ud800 x"}\n',
            "line 2, field 'text': not valid Unicode",
        ),
        ('{"id": "a", "text": "fine"}\n{"id": "b", "text": "x", "tag": "\\udfff"}\n', "line 2, field 'tag'"),
        ('{"id": "a b", "text": "fine"}\n', "line 1, field 'id'"),
    ],
)
def test_bad_corpus_is_a_clear_error_and_loses_nothing(example_index, tmp_path, content, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, encoding="utf-8")
    done = twostage("add", str(example_index), str(bad), "--quiet")
    assert done.returncode == 2
    assert "bad.jsonl" in done.stderr and expected in done.stderr and "Traceback" not in done.stderr
    info = json.loads(twostage("info", str(example_index), "--json").stdout)
    assert info["document_count"] >= 99


def test_explicit_reranker_that_cannot_load_is_a_clear_error(example_index):
    done = twostage("search", str(example_index), "berlin", "--reranker", "no-such-org/no-such-model")
    assert done.returncode == 2
    assert "--no-rerank" in done.stderr and "Traceback" not in done.stderr


def test_search_first_stage_and_rerank_depth(example_index, tmp_path):
    """--first-stage bm25/hybrid search the collection's lexical index (alone / fused with dense); --rerank-depth
    reranks the top D and writes the rest beneath in a run; a bad spec is one line, exit 2."""
    query = "How many people live in Berlin?"
    for stage in ("bm25", "hybrid", "hybrid:weighted:0.3"):
        done = twostage(
            "search", str(example_index), query, "--first-stage", stage, "--no-rerank", "--json", "--top", "3"
        )
        assert done.returncode == 0, done.stderr
        hits = json.loads(done.stdout)["hits"]
        assert len(hits) == 3 and any(h["doc_id"].startswith("cities-") for h in hits), (stage, hits)
    table = twostage(
        "search", str(example_index), query, "--first-stage", "hybrid", "--reranker", "maxsim", "--top", "3"
    )
    assert table.returncode == 0 and "cities-" in table.stdout, table.stderr
    queries = tmp_path / "q.tsv"
    queries.write_text(f"q1\t{query}\nq2\tphotosynthesis\n", encoding="utf-8")
    run = tmp_path / "out.trec"
    done = twostage(
        "search",
        str(example_index),
        "--queries",
        str(queries),
        "--run",
        str(run),
        "--k",
        "10",
        "--first-stage",
        "hybrid",
        "--reranker",
        "maxsim",
        "--rerank-depth",
        "3",
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in run.read_text().splitlines()]
    assert len(lines) == 20 and [int(line[3]) for line in lines[:10]] == list(range(1, 11))
    bad = twostage("search", str(example_index), query, "--first-stage", "sparse")
    assert bad.returncode == 2 and "--first-stage" in bad.stderr and "Traceback" not in bad.stderr


def test_empty_query_is_refused(example_index):
    done = twostage("search", str(example_index), "  ")
    assert done.returncode == 2 and "empty" in done.stderr


def test_search_effort_options(tmp_path):
    """--ef-search / --nprobe reach the index: an HNSW collection answers with more effort, bad values are refused."""
    directory = tmp_path / "hnsw-index"
    assert (
        twostage(
            "index", str(EXAMPLES / "corpus.jsonl"), "--index", str(directory), "--index-type", "hnsw", "--quiet"
        ).returncode
        == 0
    )
    query = "How many people live in Berlin?"
    plain = json.loads(twostage("search", str(directory), query, "--no-rerank", "--json", "--top", "5").stdout)
    more = twostage(
        "search", str(directory), query, "--no-rerank", "--json", "--top", "5", "--ef-search", "400", "--nprobe", "8"
    )  # nprobe does not apply to HNSW: accepted, ignored
    assert more.returncode == 0, more.stderr
    assert [h["doc_id"] for h in json.loads(more.stdout)["hits"]] == [h["doc_id"] for h in plain["hits"]]
    refused = twostage("search", str(directory), query, "--no-rerank", "--nprobe", "0")
    assert refused.returncode == 2 and "nprobe must be a positive integer" in refused.stderr


def test_failure_paths_are_one_line_and_change_nothing(example_index, tmp_path):
    """What a sweep of bad input found, each now one line with exit status 2 and the collection as it was: a delete
    naming an unknown id, an argument that is not UTF-8, a --run file with nowhere to go, a non-finite feedback
    weight; and -q, which every command takes."""

    def count() -> int:
        return json.loads(twostage("info", str(example_index), "--json").stdout)["document_count"]

    before = count()
    done = twostage("delete", str(example_index), "cities-02", "no-such-id")
    assert done.returncode == 2 and done.stderr.strip().endswith("has no document 'no-such-id'; nothing deleted")
    assert count() == before
    done = twostage("search", str(example_index), "ber\udcfflin")
    assert done.returncode == 2 and done.stderr == "twostage: error: the argument 'ber\\\\xfflin' is not valid UTF-8\n"
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\tberlin\n", encoding="utf-8")
    for run, expected in (
        (tmp_path / "nowhere" / "x.trec", "nowhere is not a directory"),
        (tmp_path, "is a directory"),
    ):
        done = twostage("search", str(example_index), "--queries", str(queries), "--run", str(run))
        assert done.returncode == 2 and f"--run {run}: " in done.stderr and expected in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1
    done = twostage("search", str(example_index), "berlin", "--prf", "3:inf")
    assert done.returncode == 2 and "finite" in done.stderr
    for command in (
        ["info", str(example_index)],
        ["check", str(example_index)],
        ["search", str(example_index), "berlin", "--no-rerank", "--top", "1"],
    ):
        done = twostage(*command, "-q")
        assert done.returncode == 0, (command, done.stderr)
    assert "unrecognized arguments" not in twostage("tokens", str(example_index), "-q").stderr
    done = twostage("search", str(example_index), "berlin", "--k", "10", "--rerank-depth", "50")
    assert done.returncode == 2 and "more than the --k 10 candidates" in done.stderr
    done = twostage("info", str(EXAMPLES / "corpus.jsonl"))
    assert done.returncode == 2 and done.stderr.strip().endswith("is a file, not a directory")
    # resuming an index with another index type or token encoding than the collection has is refused, not ignored
    done = twostage(
        "index", str(EXAMPLES / "corpus.jsonl"), "--index", str(example_index), "--index-type", "hnsw", "-q"
    )
    assert done.returncode == 2 and "has a Flat index, not hnsw" in done.stderr
    assert count() == before
    for args in (
        ["search", str(example_index), "berlin", "--fusion", "rrf:nan"],
        ["search", str(example_index), "berlin", "--first-stage", "hybrid:rrf:inf"],
        ["delete", str(example_index), "cities-02", "--wait", "nan"],
    ):
        done = twostage(*args)
        assert done.returncode == 2 and ("finite" in done.stderr or "must be 0 or more" in done.stderr), args
    assert count() == before
    # a collection that lost its manifest still holds documents: index refuses to create over it
    import shutil

    damaged = tmp_path / "no-manifest"
    shutil.copytree(example_index, damaged)
    (damaged / "manifest.json").unlink()
    size = (damaged / "documents.sqlite").stat().st_size
    done = twostage("index", str(EXAMPLES / "corpus.jsonl"), "--index", str(damaged), "-q")
    assert (
        done.returncode == 2
        and f"has no manifest.json but its documents.sqlite holds {before} documents" in done.stderr
    )
    assert (damaged / "documents.sqlite").stat().st_size == size and not (damaged / "manifest.json").exists()


def test_serve_refuses_a_port_it_cannot_listen_on_before_loading_anything(example_index):
    import socket

    done = twostage("serve", str(example_index), "--port", "70000")
    assert done.returncode == 2 and "must be 0 to 65535" in done.stderr
    done = twostage("serve", str(example_index), "--batch-window-ms", "nan")
    assert done.returncode == 2 and "--batch-window-ms must be 0 to 1000" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = twostage("serve", str(example_index), "--port", str(port))
    assert done.returncode == 2 and done.stderr.startswith(f"twostage serve: error: cannot listen on 127.0.0.1:{port}")
    assert len(done.stderr.splitlines()) == 1
