"""MaxSim with and without [CLS]/[SEP] on each side (issue 14): query tokens plain or special x passage tokens
content-only (what collections store) or all, over the dense top 100, on cacm and msmarco-dl20.

    python benchmarks/bench_special_tokens.py     # writes benchmarks/results/special_tokens.json and .md

The choice is made on cacm-tune (the queries at even positions in qid order, as bench_levers splits them) and
confirmed on the held-out cacm half and on msmarco-dl20, neither of which is tuned on. Passages and queries are
encoded once with sentence-transformers (torch) and each variant keeps or drops the special tokens of the same
forward pass, so the four variants differ in nothing else. Candidates come from collections built by
bench_levers.py (``--cache``, default runs/bench-levers/); without them or the datasets the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from common import (  # noqa: E402  (first: repo importable, hub off)
    cacm_split,
    dense_candidates,
    levers_arguments,
    machine,
    maxsim,
    torch_minilm,
)

from twostage.eval.metrics import evaluate  # noqa: E402
from twostage.eval.significance import compare  # noqa: E402

K = 100
SIDES = ("plain", "special")  # content tokens only, or [CLS]/[SEP] kept too
VARIANTS = list(itertools.product(SIDES, SIDES))  # (query side, passage side)
BASELINE = ("plain", "plain")


def runs_for(name: str, data: Path, cache: Path, model) -> tuple[dict, dict]:
    """Per variant, the reranked top 100 of every query of ``name`` (a TREC-style run), and the dataset's qrels."""
    found = dense_candidates(name, data, cache, model, K)
    runs = {}
    for q_side, p_side in VARIANTS:
        runs[(q_side, p_side)] = {
            qid: {d: maxsim(found.queries[q_side][qid], found.passages[p_side][d]) for d in docs}
            for qid, docs in found.per_query.items()
        }
    return runs, found.qrels


def table(runs: dict, qrels: dict, threshold: int, qids: list[str]) -> list[dict]:
    rows, base = [], None
    for variant in VARIANTS:
        result = evaluate(
            {q: runs[variant][q] for q in qids},
            {q: qrels[q] for q in qids},
            ("nDCG@10", "MRR@10"),
            rel_threshold=threshold,
            complete=True,
        )
        if variant == BASELINE:
            base = result.per_query
        row = {
            "query tokens": variant[0],
            "passage tokens": variant[1],
            "queries": len(qids),
            **{k: round(v, 4) for k, v in result.aggregate.items()},
        }
        if variant != BASELINE:
            row["p nDCG@10 vs plain/plain"] = round(compare(base, result.per_query, "nDCG@10").p_randomization, 4)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    levers_arguments(parser)
    args = parser.parse_args()
    started = time.time()
    model = torch_minilm("bench_special_tokens", args.data, args.cache)
    if model is None:
        return 0
    tables = {}
    cacm_runs, cacm_qrels = runs_for("cacm", args.data, args.cache, model)
    tune_qids, held_qids = cacm_split(cacm_runs[BASELINE])
    tables["cacm-tune"] = table(cacm_runs, cacm_qrels, 1, tune_qids)
    tables["cacm-held-out"] = table(cacm_runs, cacm_qrels, 1, held_qids)
    chosen = max(
        tables["cacm-tune"], key=lambda r: (r["nDCG@10"], (r["query tokens"], r["passage tokens"]) == BASELINE)
    )
    dl20_runs, dl20_qrels = runs_for("msmarco-dl20", args.data, args.cache, model)
    tables["msmarco-dl20"] = table(dl20_runs, dl20_qrels, 2, list(dl20_runs[BASELINE]))
    report = {
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": machine(),
        "k": K,
        "chosen_on_cacm_tune": {"query tokens": chosen["query tokens"], "passage tokens": chosen["passage tokens"]},
        "tables": tables,
        "seconds": round(time.time() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "special_tokens.json").write_text(json.dumps(report, indent=1))
    cols = ["query tokens", "passage tokens", "nDCG@10", "MRR@10", "p nDCG@10 vs plain/plain"]
    md = [
        "# MaxSim with and without [CLS]/[SEP] (benchmarks/bench_special_tokens.py)",
        "",
        f"Dense top {K} reranked by plain MaxSim (no fusion, feedback or IDF), all-MiniLM-L6-v2 on torch, float16 "
        f"tokens. Chosen on cacm-tune: query {chosen['query tokens']}, passage {chosen['passage tokens']}. "
        f"p: paired randomization test against plain/plain. {report['cpu']}, {report['seconds']} s.",
        "",
    ]
    for title, rows in tables.items():
        md += [f"**{title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in rows] + [""]
    (args.out / "special_tokens.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
