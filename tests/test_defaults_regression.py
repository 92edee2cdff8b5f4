"""Quality regression of the engine's default search (issue 28): eval/expected/defaults.yaml holds the default
system's figures on every dev set (written by ``benchmarks/bench_defaults.py --write-expected``), and the slow test
re-measures them through ``Engine.search_queries`` naming no option but the depth, so a change to a default, a stage
or a lever that moves a figure by more than its tolerance fails. It indexes every set with all-MiniLM-L6-v2 and int8
tokens (CPU-minutes per set), so it runs only with TWOSTAGE_FULL_REGRESSION=1, like the full msmarco-dl20
regression; a set that is not present (../shared/data, or $TWOSTAGE_SETS from benchmarks/build_sets.py) is skipped.
TWOSTAGE_REGRESSION_CACHE keeps the built collections between runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from regression import EXPECTED_DIR  # noqa: E402

FULL = os.environ.get("TWOSTAGE_FULL_REGRESSION") == "1"
EXPECTED = yaml.safe_load((EXPECTED_DIR / "defaults.yaml").read_text(encoding="utf-8"))
SETS = Path(os.environ.get("TWOSTAGE_SETS", Path.home() / ".cache" / "twostage" / "sets"))


def test_expected_file_names_every_dev_set():
    assert EXPECTED["k"] == 100 and EXPECTED["reranker"] == "maxsim"
    assert {"msmarco-dl20", "cacm"} <= set(EXPECTED["sets"])
    for name, entry in EXPECTED["sets"].items():
        assert entry["queries"] > 0 and entry["documents"] > 0, name
        assert set(entry["figures"]) == {"nDCG@10", "MRR@10", "R@100"}, name
        assert 0 < entry["tolerance"] <= 0.01, name


def test_expected_system_is_the_engine_default():
    """The recorded system (bench_defaults.py's name: STAGE + maxsim [+ fusion | + levers]) is what a search naming
    no option runs: its first stage and MaxSim's default levers."""
    from twostage.engine import MAXSIM_DEFAULTS
    from twostage.retriever.fusion import FirstStage
    from twostage.search_request import SearchRequest

    stage, _, *levers = EXPECTED["system"].split(" + ")
    assert SearchRequest().first_stage == FirstStage.parse(stage).label
    fused = {"fusion": "minmax:0.8"} if levers else {}
    feedback = {"prf": "10:0.5", "query_tokens": "special"} if levers == ["levers"] else {}
    assert {k: v for k, v in MAXSIM_DEFAULTS.items() if v not in ("none", "plain")} == {**feedback, **fused}


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="indexes every dev set (CPU-minutes each); set TWOSTAGE_FULL_REGRESSION=1")
@pytest.mark.parametrize("name", sorted(EXPECTED["sets"]))
def test_default_search_reproduces_expected_figures(name, minilm, tmp_path):
    from twostage.engine import Engine
    from twostage.eval.datasets import load_folder
    from twostage.eval.metrics import evaluate
    from twostage.indexes.documents import Document

    entry = EXPECTED["sets"][name]
    folder = (SHARED_DATA if entry["source"] == "shared" else SETS) / name
    if not (folder / "queries.tsv").is_file():
        pytest.skip(f"{folder} is not present")
    dataset = load_folder(folder)
    cache = Path(os.environ.get("TWOSTAGE_REGRESSION_CACHE", tmp_path)) / name
    if not (cache / "manifest.json").is_file():
        docs = [Document(r["id"], r["text"], r.get("title") or None) for r in dataset.iter_corpus()]
        with Engine.create(cache, encoder=minilm, reranker=None, index_type="flat", store_tokens="int8") as engine:
            engine.add(docs)
    depth = EXPECTED["k"]
    with Engine.open(cache, encoder=minilm, reranker="maxsim") as engine:
        results = engine.search_queries(dict(dataset.queries), top_k=depth, candidate_depth=depth)
    run = {qid: result.run() for qid, result in results.items()}
    scores = evaluate(run, dataset.qrels, list(entry["figures"]), rel_threshold=entry["threshold"], complete=True)
    assert len(run) == entry["queries"]
    problems = [
        f"{name} {measure}: {scores.aggregate[measure]:.4f}, expected {value:.4f} +- {entry['tolerance']}"
        for measure, value in entry["figures"].items()
        if abs(scores.aggregate[measure] - value) > entry["tolerance"]
    ]
    assert not problems, "\n".join(problems)
