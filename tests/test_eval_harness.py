"""The evaluation harness on the example set: every output written and well-formed, its numbers equal to
`eval.metrics` and `eval.significance` on the written runs, reranking equal to the engine's own."""

from __future__ import annotations

import csv
import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import EXAMPLES

from twostage.eval.datasets import load_dataset
from twostage.eval.errors import EvalInputError
from twostage.eval.harness import EvalConfig, SystemSpec, default_rel_threshold, resolve_systems, run_evaluation
from twostage.eval.metrics import evaluate
from twostage.eval.report import DEPTH_PLOT, LATENCY_PLOT, format_report_table, write_report
from twostage.eval.significance import compare
from twostage.eval.trec import ranked, read_run, write_run

DEPTHS = (5, 10, 20)
ALL_SYSTEMS = [
    "bm25",
    "dense",
    "dense+rerank@5",
    "dense+rerank@10",
    "dense+rerank@20",
    "hybrid",
    "hybrid+rerank@5",
    "hybrid+rerank@10",
    "hybrid+rerank@20",
    "run",
    "run+rerank@5",
    "run+rerank@10",
    "run+rerank@20",
]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("example-eval")
    for name in ("corpus.jsonl", "queries.tsv", "qrels.txt"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def given_run(dataset_dir) -> Path:
    """A deliberately poor first stage to rerank: every passage, in id order, for every query."""
    ids = [json.loads(line)["id"] for line in (dataset_dir / "corpus.jsonl").read_text().splitlines() if line.strip()]
    queries = load_dataset(dataset_dir).queries
    path = dataset_dir / "given.trec"
    write_run({qid: {docid: float(len(ids) - i) for i, docid in enumerate(ids)} for qid in queries}, path, tag="given")
    return path


@pytest.fixture(scope="module")
def config(minilm, tiny_cross_encoder_dir, given_run, tmp_path_factory) -> EvalConfig:
    return EvalConfig(
        encoder=minilm,
        reranker=str(tiny_cross_encoder_dir),
        depths=DEPTHS,
        rerank_run=given_run,
        index_dir=tmp_path_factory.mktemp("eval-index") / "collection",
        n_resamples=2000,
    )


@pytest.fixture(scope="module")
def report(dataset_dir, config):
    return run_evaluation(load_dataset(dataset_dir), config)


@pytest.fixture(scope="module")
def out(report, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval-out")
    write_report(report, folder)
    return folder


def test_every_system_runs_in_table_order(report):
    assert [r.name for r in report.systems] == ALL_SYSTEMS
    assert report.baseline == "dense" and report.rel_threshold == 1 and report.n_queries == 10
    assert report.n_documents == 100 and report.indexing["documents"] == 100


def test_every_output_file_is_written_and_well_formed(report, out):
    data = json.loads((out / "results.json").read_text())
    assert data["dataset"]["queries"] == 10 and data["dataset"]["rel_threshold"] == 1
    assert data["depths"] == list(DEPTHS) and data["baseline"] == "dense"
    assert "minilm" in data["models"]["bi_encoder"]["name"].lower() and data["models"]["bi_encoder"]["fingerprint"]
    assert data["models"]["reranker"]["name"] == data["config"]["reranker"]
    assert data["models"]["bm25"]["engine"] == "sqlite-fts5" and data["models"]["bm25"]["k1"] == 1.2
    assert {"python", "torch", "faiss-cpu"} <= set(data["versions"])
    assert list(data["systems"]) == ALL_SYSTEMS
    for name, system in data["systems"].items():
        assert set(system["metrics"]) == set(report.measures)
    table = (out / "table.txt").read_text()
    for name in ALL_SYSTEMS:
        assert f"\n{name} " in table
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"{n}.trec" for n in ALL_SYSTEMS)
    with open(out / "per_query.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) == {"qid", "system", *report.measures}
    assert len(rows) == len(ALL_SYSTEMS) * 10
    assert {(r["system"], r["qid"]) for r in rows} == {(s, q) for s in ALL_SYSTEMS for q in report.systems[0].per_query}


def test_json_metrics_equal_evaluate_on_the_written_runs(out, dataset_dir):
    data = json.loads((out / "results.json").read_text())
    qrels = load_dataset(dataset_dir).qrels
    with open(out / "per_query.csv", newline="") as handle:
        per_query = {(r["system"], r["qid"]): r for r in csv.DictReader(handle)}
    for name, system in data["systems"].items():
        result = evaluate(
            read_run(out / "runs" / f"{name}.trec"),
            qrels,
            data["measures"],
            rel_threshold=data["dataset"]["rel_threshold"],
            complete=True,
        )
        assert result.aggregate == pytest.approx(system["metrics"], abs=1e-12), name
        for qid, values in result.per_query.items():
            assert {m: float(per_query[name, qid][m]) for m in values} == pytest.approx(values, abs=1e-12)


def test_significance_against_the_baseline(report, out):
    data = json.loads((out / "results.json").read_text())
    assert data["systems"]["dense"]["vs_baseline"] == {}
    base = report.system("dense").per_query
    for result in report.systems:
        if result.name == "dense":
            continue
        tests = data["systems"][result.name]["vs_baseline"]
        assert set(tests) == set(report.measures)
        expected = compare(base, result.per_query, "nDCG@10", n_resamples=2000)
        assert tests["nDCG@10"]["p_randomization"] == pytest.approx(expected.p_randomization)
        assert tests["nDCG@10"]["delta"] == pytest.approx(expected.delta)
        assert 0 < tests["nDCG@10"]["p_randomization"] <= 1
    header = format_report_table(report).splitlines()[3]
    assert "p rand" in header and "p t-test" in header and "median ms" in header and "p95 ms" in header


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_valid_pngs(out):
    for name in (DEPTH_PLOT, LATENCY_PLOT):
        width, height = _png_size(out / name)
        assert width >= 800 and height >= 400


def test_stage_timings_per_query(report, out):
    data = json.loads((out / "results.json").read_text())
    assert set(data["systems"]["bm25"]["timings_ms"]) == {"search", "total"}
    assert set(data["systems"]["dense"]["timings_ms"]) == {"encode", "search", "total"}
    assert set(data["systems"]["dense+rerank@10"]["timings_ms"]) == {"encode", "search", "rerank", "total"}
    assert set(data["systems"]["run+rerank@10"]["timings_ms"]) == {"rerank", "total"}
    assert data["systems"]["run"]["timings_ms"] is None
    for name in ("dense", "dense+rerank@20", "hybrid"):
        timings = report.system(name).timings
        assert all(len(values) == 10 for values in timings.stages.values())
        assert 0 < data["systems"][name]["latency_ms"]["median"] <= data["systems"][name]["latency_ms"]["p95"]


def test_dense_rerank_equals_the_engines_own_rerank(report, config, dataset_dir, minilm):
    from twostage.engine import Engine

    queries = load_dataset(dataset_dir).queries
    with Engine.open(config.index_dir, reranker=config.reranker, encoder=minilm) as engine:
        for depth in DEPTHS:
            run = report.system(f"dense+rerank@{depth}").run
            for qid, query in queries.items():
                result = engine.search(query, k=depth, top_n=depth)
                assert [docid for docid, _ in ranked(run[qid])[:depth]] == [h.doc_id for h in result.hits]
                assert [run[qid][h.doc_id] for h in result.hits] == pytest.approx(
                    [h.rerank_score for h in result.hits], abs=1e-5
                )


def test_eval_systems_are_the_cli_batch_search(report, config, dataset_dir, tmp_path):
    """An eval system is `twostage search --queries Q --run OUT` with its engine options: the same run."""
    from twostage.cli import main

    dataset = load_dataset(dataset_dir)
    queries = tmp_path / "q.tsv"
    queries.write_text("".join(f"{qid}\t{text}\n" for qid, text in dataset.queries.items()), encoding="utf-8")
    out = tmp_path / "hybrid.trec"
    assert (
        main(
            [
                "search",
                str(config.index_dir),
                "--queries",
                str(queries),
                "--run",
                str(out),
                "--k",
                "1000",
                "--first-stage",
                "hybrid",
                "--reranker",
                config.reranker,
                "--rerank-depth",
                "10",
            ]
        )
        == 0
    )
    cli_run = read_run(out)
    eval_run = report.system("hybrid+rerank@10").run
    for qid in dataset.queries:
        assert [d for d, _ in ranked(cli_run[qid])] == [d for d, _ in ranked(eval_run[qid])]


def test_reranked_depth_keeps_the_first_stage_order_beneath(report):
    dense = report.system("dense").run
    for depth in DEPTHS:
        reranked = report.system(f"dense+rerank@{depth}").run
        for qid in dense:
            first = [docid for docid, _ in ranked(dense[qid])]
            mine = [docid for docid, _ in ranked(reranked[qid])]
            assert set(mine[:depth]) == set(first[:depth]) and mine[depth:] == first[depth:]
        # same candidates, so recall beyond the rerank depth is the first stage's
        assert report.system(f"dense+rerank@{depth}").metrics["R@100"] == report.system("dense").metrics["R@100"]


def test_rerank_run_reranks_the_given_runs_top_d(report, given_run, dataset_dir, tiny_cross_encoder_dir):
    from twostage.reranker.cross_encoder import CrossEncoderReranker

    dataset = load_dataset(dataset_dir)
    texts = {}
    for line in (dataset_dir / "corpus.jsonl").read_text().splitlines():
        doc = json.loads(line)
        texts[doc["id"]] = f"{doc['title']}. {doc['text']}"
    given = read_run(given_run)
    scorer = CrossEncoderReranker(str(tiny_cross_encoder_dir))
    assert report.system("run").run == given
    for depth in DEPTHS:
        run = report.system(f"run+rerank@{depth}").run
        for qid, query in dataset.queries.items():
            top = [docid for docid, _ in ranked(given[qid])[:depth]]
            expected = scorer.score(query, [texts[d] for d in top])
            assert [run[qid][d] for d in top] == pytest.approx(list(expected), abs=1e-5)
            assert [d for d, _ in ranked(run[qid])][depth:] == [d for d, _ in ranked(given[qid])][depth:]


def test_systems_subset_reuses_the_collection(dataset_dir, config):
    subset = EvalConfig(
        **{**config.__dict__, "systems": ["bm25", "dense+rerank@3"], "rerank_run": None, "baseline": "bm25"}
    )
    report = run_evaluation(load_dataset(dataset_dir), subset)
    assert [r.name for r in report.systems] == ["bm25", "dense+rerank@3"]
    assert report.depths == [3]
    assert report.indexing["added"] == 0 and report.indexing["unchanged"] == 100
    assert set(report.system("dense+rerank@3").vs_baseline) == set(report.measures)


def test_missing_baseline_falls_back_with_a_notice(dataset_dir, config):
    subset = EvalConfig(**{**config.__dict__, "systems": ["bm25"], "rerank_run": None})
    report = run_evaluation(load_dataset(dataset_dir), subset)
    assert report.baseline == "bm25" and any("baseline" in n for n in report.notices)


def test_resolve_systems():
    names = lambda specs: [s.name for s in specs]  # noqa: E731
    assert names(resolve_systems(None, [20, 10], have_run=False, have_reranker=True)) == [
        "bm25",
        "dense",
        "dense+rerank@10",
        "dense+rerank@20",
        "hybrid",
        "hybrid+rerank@10",
        "hybrid+rerank@20",
    ]
    assert names(resolve_systems(["bm25+rerank@10", "hybrid+rerank@5"], [10], have_run=False, have_reranker=True)) == [
        "bm25+rerank@10",
        "hybrid+rerank@5",
    ]
    assert names(resolve_systems(None, [10], have_run=True, have_reranker=False)) == ["bm25", "dense", "hybrid", "run"]
    assert names(resolve_systems(["run+rerank", "dense"], [10, 20], have_run=True, have_reranker=True)) == [
        "dense",
        "run+rerank@10",
        "run+rerank@20",
    ]
    assert resolve_systems(["Dense+Rerank@7"], [10], have_run=False, have_reranker=True) == [SystemSpec("dense", 7)]
    for bad, kwargs in [
        (["run"], {}),
        (["dense+rerank@10"], {"have_reranker": False}),
        (["splade"], {}),
        (["run/prf=3"], {"have_run": True}),
    ]:
        options = {"have_run": False, "have_reranker": True, **kwargs}
        with pytest.raises(EvalInputError):
            resolve_systems(bad, [10], **options)


def test_default_rel_threshold():
    assert default_rel_threshold("msmarco-dl20") == 2 and default_rel_threshold("msmarco-dl19") == 2
    assert default_rel_threshold("cacm") == 1 and default_rel_threshold("scifact") == 1


def test_cli_dataset_mode(dataset_dir, minilm_path, tiny_cross_encoder_dir, config, tmp_path, capsys):
    from twostage.cli import main

    code = main(
        [
            "eval",
            str(dataset_dir),
            "--model",
            str(minilm_path),
            "--reranker",
            str(tiny_cross_encoder_dir),
            "--systems",
            "bm25,dense",
            "dense+rerank@10",
            "--index",
            str(config.index_dir),
            "--out",
            str(tmp_path / "out"),
            "--max-queries",
            "4",
            "--quiet",
            "--backend",
            "onnx",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "dense+rerank@10" in captured.out and "p rand" in captured.out
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["dataset"]["queries"] == 4 and list(data["systems"]) == ["bm25", "dense", "dense+rerank@10"]
    assert data["models"]["bi_encoder"]["backend"] == "onnx/fp32"
    assert (tmp_path / "out" / DEPTH_PLOT).is_file()


def test_cli_dataset_mode_rejects_a_rerank_system_without_reranker(dataset_dir, tmp_path, capsys):
    from twostage.cli import main

    code = main(["eval", str(dataset_dir), "--no-rerank", "--systems", "dense+rerank@10", "--out", str(tmp_path)])
    assert code == 2 and "--no-rerank" in capsys.readouterr().err


def test_reranking_a_given_run_alone_needs_no_collection(dataset_dir, config, tmp_path):
    alone = EvalConfig(**{**config.__dict__, "systems": ["run", "run+rerank@5"], "index_dir": tmp_path / "unused"})
    report = run_evaluation(load_dataset(dataset_dir), alone)
    assert [r.name for r in report.systems] == ["run", "run+rerank@5"] and report.baseline == "run"
    assert report.indexing == {} and not (tmp_path / "unused").exists()
    assert report.system("run+rerank@5").metrics == pytest.approx(
        evaluate(
            report.system("run+rerank@5").run, load_dataset(dataset_dir).qrels, report.measures, complete=True
        ).aggregate
    )


def test_int8_backends_get_their_own_default_collection(dataset_dir, monkeypatch, tmp_path):
    """Float backends share one cached collection (their vectors agree); an int8 model's vectors need their own."""
    from types import SimpleNamespace

    from twostage.eval.harness import default_index_dir

    monkeypatch.setenv("TWOSTAGE_CACHE_DIR", str(tmp_path))
    dataset = load_dataset(dataset_dir)
    folder = {
        b: default_index_dir(dataset, SimpleNamespace(fingerprint="f" * 64, backend=b))
        for b in ("torch", "onnx", "openvino", "onnx-int8", "openvino-int8")
    }
    assert folder["torch"] == folder["onnx"] == folder["openvino"]
    assert len({folder["torch"], folder["onnx-int8"], folder["openvino-int8"]}) == 3
    assert all(path.parent == tmp_path / "collections" for path in folder.values())


def test_index_built_on_another_backend_is_searched_by_the_engines_rule(
    dataset_dir, config, minilm_path, report, monkeypatch
):
    """--index with a collection built on torch and an int8 backend asked for: eval searches it with the int8
    backend's float parent, as Engine.open would, instead of refusing; one bi-encoder is loaded, on that backend."""
    from twostage.retriever.biencoder import BiEncoder

    loaded, init = [], BiEncoder.__init__
    monkeypatch.setattr(
        BiEncoder, "__init__", lambda self, *a, **kw: (loaded.append(kw.get("backend")), init(self, *a, **kw))[1]
    )
    other = EvalConfig(
        model=str(minilm_path),
        backend="openvino-int8",
        reranker=None,
        systems=["dense"],
        index_dir=config.index_dir,
        n_resamples=200,
    )
    result = run_evaluation(load_dataset(dataset_dir), other)
    assert loaded == ["openvino"]
    assert result.models["bi_encoder"]["backend"].startswith("openvino/")
    assert result.indexing["unchanged"] == 100 and result.indexing["added"] == 0
    dense = report.system("dense").metrics["nDCG@10"]
    assert abs(result.system("dense").metrics["nDCG@10"] - dense) < 0.02


def test_a_rerun_into_the_same_folder_leaves_no_stale_run(report, tmp_path):
    """Runs and plots an earlier report recorded and this one does not write are removed; other files stay."""
    import dataclasses

    folder = tmp_path / "out"
    write_report(report, folder)
    assert (folder / "runs" / "run+rerank@10.trec").is_file()
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    fewer = dataclasses.replace(report, systems=[s for s in report.systems if s.name in ("dense", "bm25")])
    write_report(fewer, folder, plots=False)
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["bm25.trec", "dense.trec"]
    assert not (folder / "quality_vs_depth.png").exists() and (folder / "notes.txt").read_text() == "mine"
    assert set(json.loads((folder / "results.json").read_text())["systems"]) == {"bm25", "dense"}
