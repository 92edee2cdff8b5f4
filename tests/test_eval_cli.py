"""`twostage eval --run RUN --qrels QRELS` prints what trec_eval prints (checked against pytrec_eval)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytrec_eval
from conftest import EXAMPLES

from twostage.cli import main
from twostage.eval.trec import read_qrels, write_run

TREC_MEASURES = ["ndcg_cut_10", "recip_rank", "recall_100", "P_10", "map", "ndcg"]


@pytest.fixture(scope="module")
def qrels() -> dict:
    return read_qrels(EXAMPLES / "qrels.txt")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, qrels) -> Path:
    """A small run with ties, a judged query missing (q10) and an unjudged query (extra)."""
    docs = sorted({d for judged in qrels.values() for d in judged}) + ["unjudged-1", "unjudged-2"]
    run = {}
    for n, qid in enumerate(q for q in qrels if q != "q10"):
        run[qid] = {docid: float((i * 7 + n * 3) % 11) for i, docid in enumerate(docs)}
    run["extra"] = {"cities-01": 1.0}
    path = tmp_path_factory.mktemp("trec") / "small.trec"
    write_run(run, path, tag="small")
    return path


def pytrec(qrels: dict, run_path: Path, level: int) -> dict[str, dict[str, float]]:
    from twostage.eval.trec import read_run

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(TREC_MEASURES), relevance_level=level)
    return evaluator.evaluate(read_run(run_path))


def parse(output: str) -> dict[tuple[str, str], str]:
    lines = [line.split("\t") for line in output.strip().splitlines()]
    assert all(len(parts) == 3 for parts in lines), output
    return {(name.strip(), qid): value for name, qid, value in lines}


@pytest.mark.parametrize("level", [1, 2])
def test_output_equals_pytrec_eval(run_file, qrels, capsys, level):
    code = main(
        [
            "eval",
            "--run",
            str(run_file),
            "--qrels",
            str(EXAMPLES / "qrels.txt"),
            "--per-query",
            "-l",
            str(level),
            *[arg for m in TREC_MEASURES for arg in ("-m", m)],
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    printed = parse(captured.out)
    expected = pytrec(qrels, run_file, level)
    assert printed["runid", "all"] == "small" and printed["num_q", "all"] == str(len(expected))
    for measure in TREC_MEASURES:
        mean = sum(values[measure] for values in expected.values()) / len(expected)
        assert printed[measure, "all"] == f"{mean:.4f}"
        for qid, values in expected.items():
            assert printed[measure, qid] == f"{values[measure]:.4f}"
    assert "1 queries of" in captured.err and "no judgments" in captured.err and "extra" in captured.err


def test_json_is_full_precision(run_file, qrels, capsys):
    assert (
        main(
            [
                "eval",
                "--run",
                str(run_file),
                "--qrels",
                str(EXAMPLES / "qrels.txt"),
                "--json",
                "-l",
                "2",
                "-m",
                ",".join(TREC_MEASURES),
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    expected = pytrec(qrels, run_file, 2)
    assert data["runid"] == "small" and data["rel_threshold"] == 2 and data["extra_queries"] == ["extra"]
    assert data["missing_queries"] == ["q10"] and data["n_queries"] == len(expected)
    for measure in TREC_MEASURES:
        mean = sum(values[measure] for values in expected.values()) / len(expected)
        assert data["aggregate"][measure] == pytest.approx(mean, abs=1e-12)


def test_complete_counts_missing_queries_as_zero(run_file, qrels, capsys):
    assert (
        main(
            [
                "eval",
                "--run",
                str(run_file),
                "--qrels",
                str(EXAMPLES / "qrels.txt"),
                "-c",
                "--json",
                "-m",
                "map",
                "-m",
                "nDCG@10",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    expected = pytrec(qrels, run_file, 1)
    assert data["n_queries"] == len(qrels)
    assert data["aggregate"]["map"] == pytest.approx(sum(v["map"] for v in expected.values()) / len(qrels))
    assert data["aggregate"]["nDCG@10"] == pytest.approx(sum(v["ndcg_cut_10"] for v in expected.values()) / len(qrels))


def test_family_names_expand_to_trec_eval_cutoffs(run_file, capsys):
    assert (
        main(["eval", "--run", str(run_file), "--qrels", str(EXAMPLES / "qrels.txt"), "-m", "P", "-m", "ndcg_cut"]) == 0
    )
    names = [name for name, qid in parse(capsys.readouterr().out) if qid == "all"]
    cutoffs = [5, 10, 15, 20, 30, 100, 200, 500, 1000]
    assert names == ["runid", "num_q"] + [f"P_{k}" for k in cutoffs] + [f"ndcg_cut_{k}" for k in cutoffs]


def test_default_measures(run_file, capsys):
    assert main(["eval", "--run", str(run_file), "--qrels", str(EXAMPLES / "qrels.txt")]) == 0
    names = [name for name, _ in parse(capsys.readouterr().out)]
    assert names == ["runid", "num_q", "MRR@10", "nDCG@10", "R@10", "R@100", "R@1000", "MAP"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--run", "RUN"], "needs both --run RUN and --qrels QRELS"),
        (["DATASET", "--run", "RUN", "--qrels", "QRELS"], "not both"),
        ([], "give a DATASET"),
        (["--run", "RUN", "--qrels", "QRELS", "-m", "bogus"], "unknown measure"),
    ],
)
def test_usage_errors(args, message, run_file, capsys):
    args = [str(run_file) if a == "RUN" else str(EXAMPLES / "qrels.txt") if a == "QRELS" else a for a in args]
    assert main(["eval", *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_run_file_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 cities-01 1 0.5 tag\nq1 Q0 cities-02 2 high tag\n")
    assert main(["eval", "--run", str(bad), "--qrels", str(EXAMPLES / "qrels.txt")]) == 2
    assert "bad.trec, line 2" in capsys.readouterr().err


def test_trec_eval_mode_loads_no_model_library(run_file):
    code = (
        "import sys; from twostage.cli import main; "
        f"rc = main(['eval', '--run', {str(run_file)!r}, '--qrels', {str(EXAMPLES / 'qrels.txt')!r}]); "
        "print('torch' in sys.modules, rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "False 0", done.stderr
