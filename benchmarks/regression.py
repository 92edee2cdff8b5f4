"""Reproducibility as code: checked-in expected scores per dataset and system (`eval/expected/<dataset>.yaml`,
in the spirit of Pyserini's regression YAML) and the check of an `EvalReport` against them.

Record after a deliberate change: run `twostage eval DATASET`, then `python benchmarks/regression.py
runs/eval-DATASET/results.json --ci-systems ...` (rewrites the file; review the diff before committing it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twostage.eval.harness import EvalConfig, EvalReport

EXPECTED_DIR = Path(__file__).resolve().parents[1] / "eval" / "expected"
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
        model=expected["models"]["bi_encoder"],
        reranker=expected["models"]["reranker"],
        systems=systems or list(expected["systems"]),
        depths=cfg["depths"],
        first_stage_depth=cfg["first_stage_depth"],
        rrf_k=cfg["rrf_k"],
        index_type=cfg["index_type"],
        rel_threshold=expected["rel_threshold"],
        **overrides,
    )


def check_report(report: EvalReport, expected: dict[str, Any]) -> list[str]:
    """One message per score of `report` outside the expected value +- tolerance (empty: all within)."""
    tolerance = float(expected["tolerance"])
    problems = []
    if report.n_queries != expected["queries"]:
        problems.append(f"{report.n_queries} queries evaluated, {expected['queries']} expected")
    fingerprint = report.models.get("bi_encoder", {}).get("fingerprint")
    if fingerprint and fingerprint != expected["models"]["bi_encoder_fingerprint"]:
        problems.append(
            f"bi-encoder weights differ from the recorded ones (fingerprint {fingerprint[:12]}, "
            f"expected {expected['models']['bi_encoder_fingerprint'][:12]})"
        )
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


def expected_from_results(
    results: dict[str, Any], *, ci_systems: list[str], tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, Any]:
    """The expected-scores document for the `results.json` of a real `twostage eval` run (4 decimals)."""
    config = results["config"]
    rerank_run = config.get("rerank_run")
    return {
        "dataset": results["dataset"]["name"],
        "queries": results["dataset"]["queries"],
        "documents": results["dataset"]["documents"],
        "rel_threshold": results["dataset"]["rel_threshold"],
        "models": {
            "bi_encoder": results["models"]["bi_encoder"]["name"],
            "bi_encoder_fingerprint": results["models"]["bi_encoder"]["fingerprint"],
            "reranker": results["models"].get("reranker", {}).get("name"),
        },
        "config": {
            "depths": results["depths"],
            "first_stage_depth": config["first_stage_depth"],
            "rrf_k": config["rrf_k"],
            "index_type": config["index_type"],
            "index_factory": results.get("indexing", {}).get("factory"),
            "bm25": results["models"].get("bm25"),
            "rerank_run": None if rerank_run is None else Path(rerank_run).name.removesuffix(".trec"),
        },
        "tolerance": tolerance,
        "ci_systems": ci_systems,
        "systems": {
            name: {m: round(system["metrics"][m], 4) for m in REGRESSION_MEASURES}
            for name, system in results["systems"].items()
        },
        "versions": {
            k: v
            for k, v in results["versions"].items()
            if k not in ("platform", "cpus", "torch_threads", "load_average_1_5_15min")
        },
    }


HEADER = """\
# Expected scores of `twostage eval {dataset}` (Pyserini regression-YAML style): per system, metric -> value,
# each to be reproduced within +- tolerance. Produced by a real run of the full default configuration on CPU:
#   twostage eval {dataset} --rerank-run <data>/{dataset}/runs/{run}.trec
#   python benchmarks/regression.py runs/eval-{dataset}/results.json --ci-systems {ci}
# tests/test_eval_regression.py re-runs ci_systems (all systems with TWOSTAGE_FULL_REGRESSION=1) and compares.
# The reranker is MaxSim over the bi-encoder (the offline fallback of the default cross-encoder); the tests ask
# for it explicitly, so a machine that has the cross-encoder still checks these numbers.
"""


def main(argv: list[str] | None = None) -> int:
    """Write eval/expected/<dataset>.yaml from the results.json of a `twostage eval` run."""
    import json

    import yaml

    parser = argparse.ArgumentParser(prog="python benchmarks/regression.py", description=main.__doc__)
    parser.add_argument("results", type=Path, help="results.json written by `twostage eval DATASET`")
    parser.add_argument("--ci-systems", required=True, help="comma-separated systems the CI test re-runs")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    ci = [s.strip() for s in args.ci_systems.split(",") if s.strip()]
    unknown = [s for s in ci if s not in results["systems"]]
    if unknown:
        parser.error(f"--ci-systems {unknown} are not in {args.results}")
    expected = expected_from_results(results, ci_systems=ci, tolerance=args.tolerance)
    path = expected_path(expected["dataset"])
    header = HEADER.format(dataset=expected["dataset"], run=expected["config"]["rerank_run"], ci=",".join(ci))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(expected, sort_keys=False), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
