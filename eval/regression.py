"""Reproducibility as code: checked-in expected scores per dataset and system (`eval/expected/<dataset>.yaml`,
in the spirit of Pyserini's regression YAML) and the check of an `EvalReport` against them.

Regenerate after a deliberate change: `python -m eval.regression msmarco-dl20 [--ci-only]` (runs the recorded
configuration and rewrites the file; review the diff before committing it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from eval.harness import EvalConfig, EvalReport, run_evaluation

EXPECTED_DIR = Path(__file__).resolve().parent / "expected"
DEFAULT_TOLERANCE = 0.002
REGRESSION_MEASURES = ("nDCG@10", "MRR@10", "R@100", "R@1000", "MAP")


def expected_path(dataset: str) -> Path:
    return EXPECTED_DIR / f"{dataset}.yaml"


def load_expected(dataset: str) -> dict[str, Any]:
    """The checked-in expectations of `dataset` (FileNotFoundError if there are none)."""
    import yaml

    return yaml.safe_load(expected_path(dataset).read_text(encoding="utf-8"))


def config_from_expected(expected: dict[str, Any], *, systems: list[str] | None = None, **overrides: Any) -> EvalConfig:
    """The `EvalConfig` the expectations were produced with, for `systems` (default: every recorded system)."""
    cfg = expected["config"]
    return EvalConfig(
        model=expected["models"]["bi_encoder"], reranker=expected["models"]["reranker"],
        systems=systems or list(expected["systems"]), depths=cfg["depths"],
        first_stage_depth=cfg["first_stage_depth"], rrf_k=cfg["rrf_k"], index_type=cfg["index_type"],
        rel_threshold=expected["rel_threshold"], bm25_k1=cfg["bm25"]["k1"], bm25_b=cfg["bm25"]["b"],
        bm25_stemmer=cfg["bm25"]["stemmer"], **overrides)


def check_report(report: EvalReport, expected: dict[str, Any]) -> list[str]:
    """One message per score of `report` outside the expected value +- tolerance (empty: all within)."""
    tolerance = float(expected["tolerance"])
    problems = []
    if report.n_queries != expected["queries"]:
        problems.append(f"{report.n_queries} queries evaluated, {expected['queries']} expected")
    fingerprint = report.models.get("bi_encoder", {}).get("fingerprint")
    if fingerprint and fingerprint != expected["models"]["bi_encoder_fingerprint"]:
        problems.append(f"bi-encoder weights differ from the recorded ones (fingerprint {fingerprint[:12]}, "
                        f"expected {expected['models']['bi_encoder_fingerprint'][:12]})")
    for result in report.systems:
        wanted = expected["systems"].get(result.name)
        if wanted is None:
            problems.append(f"{result.name}: no expected scores recorded")
            continue
        for measure, value in wanted.items():
            got = result.metrics[measure]
            if abs(got - value) > tolerance:
                problems.append(f"{result.name} {measure}: {got:.4f}, expected {value:.4f} +- {tolerance}")
    return problems


def expected_from_report(report: EvalReport, *, ci_systems: list[str], tolerance: float = DEFAULT_TOLERANCE,
                         rerank_run: str | None = None) -> dict[str, Any]:
    """The YAML document recording `report`'s configuration and scores (4 decimals)."""
    config = report.config
    return {
        "dataset": report.dataset,
        "queries": report.n_queries,
        "documents": report.n_documents,
        "rel_threshold": report.rel_threshold,
        "models": {"bi_encoder": report.models["bi_encoder"]["name"],
                   "bi_encoder_fingerprint": report.models["bi_encoder"]["fingerprint"],
                   "reranker": report.models.get("reranker", {}).get("name")},
        "config": {"depths": report.depths, "first_stage_depth": config["first_stage_depth"],
                   "rrf_k": config["rrf_k"], "index_type": config["index_type"],
                   "bm25": {"k1": config["bm25_k1"], "b": config["bm25_b"], "stemmer": config["bm25_stemmer"]},
                   "rerank_run": rerank_run},
        "tolerance": tolerance,
        "ci_systems": ci_systems,
        "systems": {r.name: {m: round(r.metrics[m], 4) for m in REGRESSION_MEASURES} for r in report.systems},
        "versions": {k: v for k, v in report.versions.items() if k not in ("platform", "cpus", "torch_threads")},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the configuration recorded for a dataset and rewrite its expected-scores file."""
    import yaml

    from eval.datasets import load_dataset

    parser = argparse.ArgumentParser(prog="python -m eval.regression", description=main.__doc__)
    parser.add_argument("dataset", help="a dataset with a file in eval/expected/, e.g. msmarco-dl20")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    expected = load_expected(args.dataset)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    run_name = expected["config"].get("rerank_run")
    rerank_run = dataset.runs[run_name] if run_name else None
    report = run_evaluation(
        dataset, config_from_expected(expected, rerank_run=rerank_run, progress=True),
        log=lambda message: print(message, file=sys.stderr))
    fresh = expected_from_report(report, ci_systems=expected["ci_systems"], tolerance=expected["tolerance"],
                                 rerank_run=run_name)
    header = "".join(line + "\n" for line in expected_path(args.dataset).read_text().splitlines()
                     if line.startswith("#"))
    expected_path(args.dataset).write_text(header + yaml.safe_dump(fresh, sort_keys=False), encoding="utf-8")
    print(f"wrote {expected_path(args.dataset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
