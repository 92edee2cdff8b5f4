"""`twostage eval` on bad input: one line naming the file (and line), exit status 2, nothing lost or half-written.

Most cases run without a model: trec_eval mode (`--run/--qrels`), or dataset mode with only the given run (`--systems
run --rerank-run FILE`). The collection and lever-option cases use the tiny bi-encoder of tests/tiny_models.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twostage.cli import main

CORPUS = [
    {"id": f"d{i}", "text": text}
    for i, text in enumerate(
        [
            "Berlin is the capital of Germany.",
            "Paris is the capital of France.",
            "The Louvre is a museum in Paris.",
            "The telescope was launched in December.",
            "Bread is baked from flour and water.",
            "Rome is the capital of Italy.",
            "Cells divide by mitosis.",
            "The moon orbits the earth.",
        ]
    )
]
QUERIES = "q1\tcapital of Germany\nq2\tmuseum in Paris\n"
QRELS = "q1 0 d0 2\nq1 0 d5 1\nq2 0 d2 2\n"
RUN = "q1 Q0 d0 1 3.0 given\nq1 Q0 d1 2 2.0 given\nq2 Q0 d2 1 3.0 given\nq2 Q0 d1 2 1.0 given\n"


def _dataset(folder: Path, queries: bytes | str = QUERIES, qrels: bytes | str = QRELS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("queries.tsv", queries), ("qrels.txt", qrels)):
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS), encoding="utf-8")
    return folder


def _write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit status 2 and exactly one stderr line `twostage CMD: error: ...`; return it."""
    code = main([*argv, "-q"] if argv[0] == "eval" and argv[1:2] != ["--run"] else argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"twostage {argv[0]}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------- 1. bytes that are not UTF-8
@pytest.mark.parametrize("bad", ["run", "qrels"])
def test_trec_mode_names_the_file_and_line_that_is_not_utf8(tmp_path, capsys, bad):
    run = _write(tmp_path / "r.trec", RUN.encode().replace(b"q2 Q0 d2", b"q2 Q0 d\xff2") if bad == "run" else RUN)
    qrels = _write(
        tmp_path / "q.qrels", QRELS.encode().replace(b"q1 0 d5", b"q1 0 d\xff5") if bad == "qrels" else QRELS
    )
    line = _one_line_error(capsys, ["eval", "--run", str(run), "--qrels", str(qrels)])
    path, number = (run, 3) if bad == "run" else (qrels, 2)
    assert f"{path}, line {number}: not valid UTF-8 (byte 0xff" in line


def test_dataset_queries_that_are_not_utf8(tmp_path, capsys):
    folder = _dataset(tmp_path / "ds", queries=b"q1\tcapital of Germany\nq2\tmus\xffeum\n")
    line = _one_line_error(
        capsys,
        [
            "eval",
            str(folder),
            "--systems",
            "run",
            "--rerank-run",
            str(_write(tmp_path / "r.trec", RUN)),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert f"{folder / 'queries.tsv'}, line 2: not valid UTF-8" in line
    assert not (tmp_path / "out").exists()


def test_rerank_run_that_is_not_utf8(tmp_path, capsys):
    folder = _dataset(tmp_path / "ds")
    run = _write(tmp_path / "bad.trec", RUN.encode().replace(b"given\nq2", b"giv\xfeen\nq2", 1))
    line = _one_line_error(
        capsys, ["eval", str(folder), "--systems", "run", "--rerank-run", str(run), "--out", str(tmp_path / "out")]
    )
    assert f"{run}, line 2: not valid UTF-8 (byte 0xfe" in line


def test_search_queries_that_are_not_utf8(tmp_path, capsys):
    """`twostage search --queries` reads with the same reader; the file is read before the collection opens."""
    queries = _write(tmp_path / "q.tsv", b"q1\tBer\xfflin\n")
    line = _one_line_error(
        capsys,
        ["search", str(tmp_path / "no-collection"), "--queries", str(queries), "--run", str(tmp_path / "o.trec")],
    )
    assert f"{queries}, line 1: not valid UTF-8 (byte 0xff at byte 7 of the line)" in line
    assert not (tmp_path / "o.trec").exists()


# ------------------------------------------------------------------------------------------ 2. a leading UTF-8 BOM
def test_a_leading_bom_is_not_part_of_the_first_id(tmp_path, capsys):
    bom = "\ufeff"
    run = _write(tmp_path / "r.trec", bom + RUN)
    qrels = _write(tmp_path / "q.qrels", bom + QRELS)
    assert main(["eval", "--run", str(run), "--qrels", str(qrels), "--json", "-m", "nDCG@10", "--per-query"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["per_query"]) == {"q1", "q2"}

    folder = _dataset(tmp_path / "ds", queries=bom + QUERIES, qrels=bom + QRELS)
    from twostage.eval.datasets import load_dataset
    from twostage.eval.trec import read_queries_tsv

    assert list(read_queries_tsv(folder / "queries.tsv")) == ["q1", "q2"]
    assert list(load_dataset(folder).queries) == ["q1", "q2"]


# --------------------------------------------------------------------------- 3. --systems "" and a negative --rrf-k
@pytest.mark.parametrize(
    "args, words",
    [
        (["--systems", ""], "--systems names no system"),
        (["--systems", ","], "--systems names no system"),
        (["--rrf-k", "-1", "--systems", "hybrid"], "--rrf-k must be"),
        (["--rrf-k", "nan", "--systems", "hybrid"], "--rrf-k must be"),
        (["--systems", "bm25/prf=3:0.5"], "needs a dense or hybrid first stage"),
        (["--systems", "dense/prf=x"], "system dense/prf=x: prf"),
        (["-l", "0"], "-l/--rel-threshold"),
    ],
)
def test_bad_options_are_refused_before_anything_loads(tmp_path, capsys, monkeypatch, args, words):
    import twostage.eval.datasets as datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the dataset was read"))
    line = _one_line_error(capsys, ["eval", str(_dataset(tmp_path / "ds")), *args, "--out", str(tmp_path / "out")])
    assert words in line


# ----------------------------------------------------------------- 4. systems with lever options, whole outputs
def test_run_file_names_are_safe_and_unambiguous():
    from twostage.eval.report import run_file_name

    assert run_file_name("dense+rerank@20") == "dense+rerank@20.trec"  # safe names keep their file names
    names = [
        "dense/prf=3:0.5",
        "dense+rerank@100/fusion=zscore:0.7",
        "dense+rerank@100/default",
        "dense/prf=3:0.5/fusion=rrf",
        "dense/prf=3%3A0.5",
    ]
    files = [run_file_name(n) for n in names]
    assert len(set(files)) == len(files)
    assert all("/" not in f and ":" not in f and "\\" not in f for f in files)


def test_readme_lever_systems_evaluate_end_to_end(tmp_path, capsys, tiny_bi_encoder_dir):
    from urllib.parse import unquote

    from twostage.eval.trec import read_run

    folder = _dataset(tmp_path / "ds")
    systems = ["dense", "dense+rerank@5/fusion=zscore:0.7", "dense+rerank@5/default", "dense/prf=3:0.5"]
    code = main(
        [
            "eval",
            str(folder),
            "--model",
            str(tiny_bi_encoder_dir),
            "--reranker",
            "maxsim",
            "--systems",
            *systems,
            "--index",
            str(tmp_path / "c"),
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(data["systems"]) == set(systems)
    runs = sorted((tmp_path / "out" / "runs").iterdir())
    assert sorted(unquote(p.name.removesuffix(".trec")) for p in runs) == sorted(systems)
    for name, system in data["systems"].items():
        assert set(read_run(tmp_path / "out" / system["run_file"])) == {"q1", "q2"}, name


def test_a_failure_while_writing_leaves_no_half_written_outputs(tmp_path, capsys, monkeypatch):
    import twostage.eval.report as report

    folder = _dataset(tmp_path / "ds")
    run = _write(tmp_path / "r.trec", RUN)
    out = tmp_path / "out"
    argv = ["eval", str(folder), "--systems", "run", "--rerank-run", str(run), "--out", str(out)]
    assert main([*argv, "-q"]) == 0
    capsys.readouterr()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("results.json") in before and Path("runs/run.trec") in before

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(args[1]))

    monkeypatch.setattr(report, "write_per_query_csv", disk_full)
    _write(run, RUN.replace("3.0", "0.5"))
    line = _one_line_error(capsys, argv)
    assert "No space left on device" in line and ".eval-" not in line
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier outputs as they were, no staging folder left behind
    assert not list(out.glob(".eval-*"))

    import twostage.eval.trec as trec

    monkeypatch.undo()
    monkeypatch.setattr(trec, "open_text", lambda path, mode="r": disk_full(None, path))
    line = _one_line_error(capsys, argv)
    assert f"{out / 'runs' / 'run.trec'}: cannot write the run file: No space left on device" in line
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    fresh = tmp_path / "fresh" / "out"
    _one_line_error(capsys, [*argv[:-1], str(fresh)])
    assert not fresh.exists()


# ------------------------------------------------------------------------- 5. a collection eval did not build
def _collection(path: Path, model: Path, docs: list[dict], store_tokens: str | bool = "int8") -> int:
    from twostage.engine import Engine

    engine = Engine.create(path, model=str(model), reranker=None, store_tokens=store_tokens)
    try:
        engine.add(docs)
        return len(engine.collection)
    finally:
        engine.close()


def _count(path: Path, capsys) -> int:
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["document_count"]


@pytest.mark.parametrize("kind", ["other documents", "changed text", "no token vectors"])
def test_an_index_dir_holding_another_collection_is_refused_and_left_alone(tmp_path, capsys, tiny_bi_encoder_dir, kind):
    path = tmp_path / "mine"
    docs = {
        "other documents": [{"id": f"x{i}", "text": f"my own document {i}"} for i in range(12)],
        "changed text": [{**d, "text": d["text"] + " (edited)"} for d in CORPUS[:3]],
        "no token vectors": CORPUS[:3],
    }[kind]
    stored = _collection(path, tiny_bi_encoder_dir, docs, store_tokens=False if kind == "no token vectors" else "int8")
    capsys.readouterr()  # the model's own loading messages
    files = sorted(p.name for p in path.iterdir())
    line = _one_line_error(
        capsys,
        [
            "eval",
            str(_dataset(tmp_path / "ds")),
            "--model",
            str(tiny_bi_encoder_dir),
            "--systems",
            "bm25",
            "--index",
            str(path),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert f"{path} holds a collection that is not the one eval builds" in line and "--overwrite" in line
    assert {
        "other documents": "12 of them not in the corpus of 8",
        "changed text": "3 of its 3 documents differ",
        "no token vectors": "no token vectors",
    }[kind] in line
    assert _count(path, capsys) == stored and sorted(p.name for p in path.iterdir()) == files
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_it_and_evals_own_collection_is_reused(tmp_path, capsys, tiny_bi_encoder_dir):
    path = tmp_path / "mine"
    _collection(path, tiny_bi_encoder_dir, [{"id": f"x{i}", "text": f"my own document {i}"} for i in range(12)])
    folder = _dataset(tmp_path / "ds")
    argv = [
        "eval",
        str(folder),
        "--model",
        str(tiny_bi_encoder_dir),
        "--no-rerank",
        "--systems",
        "bm25",
        "--index",
        str(path),
        "--out",
        str(tmp_path / "out"),
        "-q",
    ]
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert _count(path, capsys) == len(CORPUS)
    assert main(argv) == 0, capsys.readouterr().err  # the collection eval built for this dataset: reused as it is
    indexing = json.loads((tmp_path / "out" / "results.json").read_text())["indexing"]
    assert indexing["unchanged"] == len(CORPUS) and indexing["added"] == 0


# --------------------------------------------------------------------------- 6. missing or unwritable files
@pytest.mark.parametrize("missing", ["run", "qrels"])
def test_trec_mode_names_the_missing_file(tmp_path, capsys, missing):
    run = _write(tmp_path / "r.trec", RUN)
    qrels = _write(tmp_path / "q.qrels", QRELS)
    nope = tmp_path / "in" / "nope"
    argv = [
        "eval",
        "--run",
        str(nope if missing == "run" else run),
        "--qrels",
        str(nope if missing == "qrels" else qrels),
    ]
    line = _one_line_error(capsys, argv)
    assert f"error: {nope}: no such file (given by --{missing})" in line and "documents.sqlite" not in line
    line = _one_line_error(capsys, ["eval", "--run", str(tmp_path), "--qrels", str(qrels)])
    assert f"{tmp_path}: is a directory" in line


def test_dataset_mode_checks_its_files_and_out_before_working(tmp_path, capsys):
    folder = _dataset(tmp_path / "ds")
    run = _write(tmp_path / "r.trec", RUN)
    base = ["eval", str(folder), "--systems", "run"]
    line = _one_line_error(capsys, [*base, "--rerank-run", str(tmp_path / "nope.trec"), "--out", str(tmp_path / "o")])
    assert f"{tmp_path / 'nope.trec'}: no such file (given by --rerank-run)" in line
    a_file = _write(tmp_path / "a-file", "x")
    line = _one_line_error(capsys, [*base, "--rerank-run", str(run), "--out", str(a_file)])
    assert f"{a_file}: exists and is not a directory" in line
    line = _one_line_error(capsys, [*base, "--rerank-run", str(run), "--out", str(a_file / "sub")])
    assert f"{a_file / 'sub'}: cannot create the output folder: {a_file} is not a directory" in line
    line = _one_line_error(capsys, ["eval", str(folder), "--systems", "bm25", "--index", str(a_file)])
    assert f"{a_file}: exists and is not a directory" in line
    assert a_file.read_text() == "x"


def test_an_unwritable_out_is_named(tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # root ignores permission bits: refuse as a RO mount
    out = tmp_path / "ro" / "out"
    line = _one_line_error(
        capsys,
        [
            "eval",
            str(_dataset(tmp_path / "ds")),
            "--systems",
            "run",
            "--rerank-run",
            str(_write(tmp_path / "r.trec", RUN)),
            "--out",
            str(out),
        ],
    )
    assert f"{out}: cannot write the output folder: Permission denied (in {tmp_path})" in line


def test_labels_and_scores_are_ascii_numbers_and_m_names_a_measure(tmp_path):
    """trec_eval's numbers: '1_0' and full-width digits, which Python's int() and float() take, are refused."""
    from twostage.eval.errors import EvalInputError
    from twostage.eval.trec import read_qrels, read_run
    from twostage.eval.treceval import expand_measures

    qrels = tmp_path / "q.qrels"
    for label in ("1_0", "\uff12"):
        qrels.write_text(f"q1 0 d1 {label}\n", encoding="utf-8")
        with pytest.raises(EvalInputError, match="integer relevance label"):
            read_qrels(qrels)
    run = tmp_path / "r.trec"
    for score in ("1_0", "\uff11.0"):
        run.write_text(f"q1 Q0 d1 1 {score} t\n", encoding="utf-8")
        with pytest.raises(EvalInputError, match="numeric score"):
            read_run(run)
    with pytest.raises(ValueError, match="names no measure"):
        expand_measures([""])
