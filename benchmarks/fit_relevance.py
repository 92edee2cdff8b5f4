"""Fit the relevance score (twostage/relevance.py): a logistic regression from the stage scores to P(relevant), fitted
on one evaluation set's judged candidates and checked on the others by expected calibration error (ECE).

    python benchmarks/fit_relevance.py [--fit-on cranfield]   # after bench_defaults.py has cached its passes

Features per candidate (what the engine computes for a hit): ``maxsim_mean``, the raw MaxSim score divided by the
number of query tokens it summed over (a mean best cosine, comparable across query lengths and collections), and
``cosine``, the dense cosine of the query with the passage. One fit per MaxSim query-token setting ("plain",
"special"), and a cosine-only fit for searches without a second stage ("none"). Candidates are the union of every
first stage's top 100 per query (their features do not depend on the first stage); a candidate without a judgement
counts as not relevant, relevant = label >= the set's threshold (bench_defaults.THRESHOLDS).

Writes the fitted coefficients to twostage/relevance_fits/<model>.json (shipped with the package) and the check to
benchmarks/results/relevance.json and .md: ECE (10 equal-width bins) and log loss on every set, over all candidates
and over the chosen default's top 10 per query, for a fit on each set in turn (the shipped one is --fit-on's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, RESULTS, THRESHOLDS, machine, minilm_path  # noqa: E402

from twostage.eval.datasets import load_folder  # noqa: E402
from twostage.relevance import FEATURES, RelevanceFit, expected_calibration_error  # noqa: E402
from twostage.retriever.biencoder import BiEncoder  # noqa: E402

SHARED = ("msmarco-dl20", "cacm")  # in --data; the others are build_sets.py's, in --sets
FITS = {"plain": False, "special": True}  # query-token setting -> the passes run with levers (special tokens)


def samples(passes: dict, qrels: dict, threshold: int, levers: bool, top: dict | None = None) -> tuple:
    """(maxsim_mean, cosine, label) rows of every candidate, deduplicated per (query, document); ``top`` keeps only
    each query's listed documents."""
    seen, rows = set(), []
    for name in sorted(n for n in passes if n.endswith("|levers" if levers else "|plain")):
        for qid, row in passes[name].items():
            for doc, maxsim, cosine in zip(row["ids"], row["maxsim"], row["cosine"]):
                if (qid, doc) in seen or (top is not None and doc not in top[qid]):
                    continue
                seen.add((qid, doc))
                rows.append((maxsim / row["tokens"], cosine, int(qrels.get(qid, {}).get(doc, 0) >= threshold)))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def fit(rows: np.ndarray, columns: list[int]) -> RelevanceFit:
    """Logistic regression (scikit-learn, no regularisation to speak of) of the label on the chosen columns."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e4, max_iter=1000).fit(rows[:, columns], rows[:, 2])
    names = tuple(FEATURES[i] for i in columns)
    return RelevanceFit(names, tuple(round(float(c), 6) for c in model.coef_[0]), round(float(model.intercept_[0]), 6))


def check(model: RelevanceFit, rows: np.ndarray) -> dict:
    """ECE, log loss, the base rate and the mean prediction of ``model`` on ``rows``."""
    p = model.probability(rows[:, : len(FEATURES)])
    y = rows[:, 2]
    eps = 1e-9
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    return {
        "n": len(y),
        "ECE": round(expected_calibration_error(p, y), 4),
        "log loss": round(loss, 4),
        "relevant": round(float(y.mean()), 4),
        "mean p": round(float(p.mean()), 4),
    }


def top10(passes: dict, stage: str, levers: bool) -> dict[str, set[str]]:
    """Each query's top 10 under MaxSim fused with the first stage (the default's final order, minmax:0.8)."""
    from twostage.reranker.score_fusion import Fusion, fuse_scores

    out = {}
    for qid, row in passes[f"{stage}|{'levers' if levers else 'plain'}"].items():
        fused = fuse_scores(row["first"], row["maxsim"], Fusion.parse("minmax:0.8"))
        out[qid] = {row["ids"][i] for i in np.argsort(-fused, kind="stable")[:10]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "bench-defaults")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", type=Path, default=Path.home() / ".cache" / "twostage" / "sets")
    parser.add_argument("--fit-on", default="cranfield", help="the set whose candidates the shipped fit is fitted on")
    parser.add_argument("--stage", default="dense", help="the default first stage (its top 10 is checked)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = {}
    for name in THRESHOLDS:
        files = sorted((args.cache / name / "passes").glob("*.json"))
        if not {"dense-plain", "dense-levers"} <= {f.stem for f in files}:
            continue
        folder = (args.data if name in SHARED else args.sets) / name
        qrels = load_folder(folder).qrels
        passes = {f.stem.replace("-", "|", 1).replace("_", ":"): json.loads(f.read_text()) for f in files}
        data[name] = {
            setting: {
                "all": samples(passes, qrels, THRESHOLDS[name], levers),
                "top 10": samples(passes, qrels, THRESHOLDS[name], levers, top10(passes, args.stage, levers)),
            }
            for setting, levers in FITS.items()
        }
    if args.fit_on not in data:
        print(f"fit_relevance: no cached passes for {args.fit_on} in {args.cache}; run bench_defaults.py first")
        return 2
    checks: dict = {}
    shipped: dict[str, RelevanceFit] = {}
    for fit_on in data:
        for setting in FITS:
            variants = {
                "maxsim_mean + cosine": fit(data[fit_on][setting]["all"], [0, 1]),
                "maxsim_mean": fit(data[fit_on][setting]["all"], [0]),
            }
            if setting == "plain":
                variants["cosine (no second stage)"] = fit(data[fit_on][setting]["all"], [1])
            for variant, model in variants.items():
                key = f"fit on {fit_on} / {setting} / {variant}"
                checks[key] = {
                    "fit": model.to_dict(),
                    **{
                        f"{name} {part}": check(model, rows)
                        for name in data
                        for part, rows in data[name][setting].items()
                    },
                }
            if fit_on == args.fit_on:
                shipped[setting] = variants["maxsim_mean + cosine"]
                if setting == "plain":
                    shipped["none"] = variants["cosine (no second stage)"]
    encoder = BiEncoder(minilm_path())
    record = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "fingerprint": encoder.fingerprint,
        "fitted_on": args.fit_on,
        "label": f"relevant = label >= {THRESHOLDS[args.fit_on]} on {args.fit_on}",
        "created_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "fits": {setting: model.to_dict() for setting, model in shipped.items()},
        "checked": {
            name: checks[f"fit on {args.fit_on} / {s} / {v}"][f"{name} top 10"]["ECE"]
            for name in data
            for s, v in (("special", "maxsim_mean + cosine"),)
        },
    }
    target = REPO / "twostage" / "relevance_fits" / "all-MiniLM-L6-v2.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(record, indent=1) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key, value in checks.items():
        fit_on, setting, variant = key.removeprefix("fit on ").split(" / ")
        for part_key, c in value.items():
            if part_key != "fit":
                name, part = part_key.split(" ", 1)
                rows.append({"fit on": fit_on, "tokens": setting, "features": variant, "set": name, "part": part, **c})
    result = {"cpu": machine(), "fit_on": args.fit_on, "stage": args.stage, "shipped": record, "checks": rows}
    (args.out / "relevance.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Relevance score calibration (benchmarks/fit_relevance.py)",
        "",
        f"Shipped fit: on {args.fit_on}; ECE = expected calibration error (10 equal-width bins); 'top 10' = each "
        f"query's top 10 of {args.stage} + MaxSim fused minmax:0.8; 'all' = every first stage's top 100.",
        "",
        "| fit | features | set | part | n | relevant | mean p | ECE | log loss |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        lines.append(
            f"| {c['fit on']} / {c['tokens']} | {c['features']} | {c['set']} | {c['part']} | {c['n']} | "
            f"{c['relevant']} | {c['mean p']} | {c['ECE']} | {c['log loss']} |"
        )
    (args.out / "relevance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
