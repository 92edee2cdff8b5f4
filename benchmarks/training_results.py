"""Collect the measured result of ``twostage train`` on msmarco-dl20 into benchmarks/results/training.json.

    python benchmarks/training_results.py --maxsim-eval runs/eval-msmarco-dl20/results.json \\
        --model ce-margin-74=runs/ce-margin-step74-report.json --model ce-margin-87=runs/ce-margin --model runs/bi-mnrl

Reads the harness report of dense + MaxSim (``twostage eval msmarco-dl20 --reranker maxsim``) and each trained
model's ``report.json`` (its ``test`` section is the same harness on the same 54 held-out queries), and writes one
table row per system with nDCG@10 and MRR@10 (label >= 2), plus each model's recipe, steps and time. The prose of
``training.md`` (what was tried, limitations) is written by hand around the table this prints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def harness_rows(path: Path) -> list[dict]:
    """Rows for dense and dense+rerank@d from a harness results.json (``twostage eval --out``)."""
    report = json.loads(path.read_text())
    keep = ("dense", "dense+rerank@20", "dense+rerank@50", "dense+rerank@100")
    return [
        {
            "system": name.replace("rerank", "MaxSim"),
            "nDCG@10": system["metrics"]["nDCG@10"],
            "MRR@10": system["metrics"]["MRR@10"],
        }
        for name, system in report["systems"].items()
        if name in keep
    ]


def model_rows(spec: str) -> tuple[list[dict], dict]:
    """Rows for a trained model's test section (``LABEL=REPORT.json`` or a model directory), and a summary of how it
    was trained."""
    label, _, where = spec.rpartition("=")
    path = Path(where)
    report = json.loads((path / "report.json" if path.is_dir() else path).read_text())
    label = label or path.name
    rows = []
    for system, values in (report.get("test", {}).get("after") or {}).items():
        if report["kind"] == "reranker" and system == "dense":
            continue
        name = system.replace("rerank", label) if report["kind"] == "reranker" else f"dense ({label})"
        rows.append({"system": name, "nDCG@10": values["nDCG@10"], "MRR@10": values["MRR@10"]})
    training = report["training"]
    summary = {
        "model": label,
        "kind": report["kind"],
        "base": report["base"],
        "loss": report["loss"],
        "labels": report["data"]["labels"],
        "train_queries": report["data"]["train_queries"],
        "val_queries": report["data"]["val_queries"],
        "depth": report["data"]["depth"],
        "rows": report["data"]["rows"],
        "settings": report["settings"],
        "steps": training["steps"],
        "train_seconds": training["seconds"],
        "total_seconds": report["total_seconds"],
        "stopped_by": training["stopped_by"],
        "best_step": training["best_step"],
        "loss_first_last": [training["first_loss"], training["last_loss"]],
        "validation": report["validation"],
    }
    return rows, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maxsim-eval", type=Path, required=True)
    parser.add_argument("--model", action="append", default=[], metavar="[LABEL=]PATH")
    args = parser.parse_args()
    rows = harness_rows(args.maxsim_eval)
    summaries = []
    for model in args.model:
        more, summary = model_rows(model)
        rows += more
        summaries.append(summary)
    out = {
        "dataset": "msmarco-dl20 (54 judged queries, held out from all training)",
        "rel_threshold": 2,
        "rows": rows,
        "models": summaries,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(out, indent=2) + "\n")
    print("| system | nDCG@10 | MRR@10 |\n|---|---|---|")
    for row in rows:
        print(f"| {row['system']} | {row['nDCG@10']:.4f} | {row['MRR@10']:.4f} |")


if __name__ == "__main__":
    main()
