"""Regression: `twostage eval msmarco-dl20` reproduces the checked-in scores of eval/expected/msmarco-dl20.yaml.

The default test runs the part of the recorded configuration that fits in CI time on 2 CPU cores: BM25 over the
whole 15.5k-passage corpus (the collection's FTS5 index, in a collection whose vectors come from a tiny bi-encoder),
the published BM25 run, and that run's top 20 reranked by MaxSim over all-MiniLM-L6-v2 (about 2 CPU-minutes for the
last two; measured 4.7 min wall on a 2-vCPU VM at load average ~10). Dense-indexing
the whole corpus took about 11 CPU-minutes there (30 min wall under that load), so the dense systems are checked
only with TWOSTAGE_FULL_REGRESSION=1. Skipped without ../shared/data.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from conftest import shared_dataset

from twostage.eval.datasets import load_dataset
from twostage.eval.harness import run_evaluation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from regression import check_report, config_from_expected, load_expected  # noqa: E402

FULL = os.environ.get("TWOSTAGE_FULL_REGRESSION") == "1"


@pytest.fixture(scope="module")
def expected() -> dict:
    return load_expected("msmarco-dl20")


@pytest.fixture(scope="module")
def dl20():
    return load_dataset(shared_dataset("msmarco-dl20"))


def test_expected_file_is_complete(expected):
    assert expected["dataset"] == "msmarco-dl20" and expected["rel_threshold"] == 2
    assert 0 < expected["tolerance"] <= 0.005
    assert set(expected["ci_systems"]) <= set(expected["systems"])
    for scores in expected["systems"].values():
        assert set(scores) == {"nDCG@10", "MRR@10", "R@100", "R@1000", "MAP"}


def _check(dl20, expected, systems, encoder, tmp_path, *, vectors_unused: bool = False) -> float:
    config = config_from_expected(
        expected,
        systems=systems,
        encoder=encoder,
        index_dir=tmp_path / "collection",
        rerank_run=dl20.runs[expected["config"]["rerank_run"]],
        n_resamples=1000,
    )
    started = time.perf_counter()
    report = run_evaluation(dl20, config)
    elapsed = time.perf_counter() - started
    assert [r.name for r in report.systems] == systems
    if vectors_unused:  # the collection's vectors come from another bi-encoder, and no system reads them
        report.models.pop("bi_encoder")
    problems = check_report(report, expected)
    assert not problems, "\n".join(problems)
    return elapsed


def test_ci_configuration_reproduces_expected_scores(
    dl20, expected, minilm, tiny_bi_encoder_dir, tmp_path, monkeypatch
):
    """BM25 searches the collection's lexical index, which the engine keeps beside the vectors: the CI builds that
    collection with a tiny bi-encoder (BM25 never reads the vectors) instead of dense-indexing with MiniLM. Long
    passages are split into passages in the bi-encoder's window, so the stand-in splits with MiniLM's tokenizer and
    window, as the collection it stands in for does (its own 128-position window would split more)."""
    from twostage.ingest import passages, writes
    from twostage.retriever.biencoder import BiEncoder

    monkeypatch.setattr(writes, "splitter_for", lambda encoder, *a, **kw: passages.splitter_for(minilm, *a, **kw))

    lexical = [s for s in expected["ci_systems"] if s == "bm25"]
    given = [s for s in expected["ci_systems"] if s not in lexical]
    assert all(s == "run" or s.startswith("run+") for s in given), given
    elapsed = _check(
        dl20, expected, lexical, BiEncoder(str(tiny_bi_encoder_dir)), tmp_path / "lexical", vectors_unused=True
    )
    elapsed += _check(dl20, expected, given, minilm, tmp_path / "given")
    print(f"msmarco-dl20 {expected['ci_systems']}: {elapsed:.0f}s")


@pytest.mark.slow
@pytest.mark.skipif(
    not FULL, reason="dense-indexes the whole corpus (minutes on 2 cores); set TWOSTAGE_FULL_REGRESSION=1"
)
def test_full_configuration_reproduces_expected_scores(dl20, expected, minilm, tmp_path):
    elapsed = _check(dl20, expected, list(expected["systems"]), minilm, tmp_path)
    print(f"msmarco-dl20, every system: {elapsed:.0f}s")
