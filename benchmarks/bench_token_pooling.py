"""Token pooling before storage (issue 13): MaxSim over each dataset's dense top 100 with every passage's tokens pooled
by a factor (``indexes.token_pooling``), as float16 and as 2bit codes, on cacm (where the choice is made) and msmarco-dl20.

    python benchmarks/bench_token_pooling.py     # writes benchmarks/results/token_pooling.json and .md

Offline, like the codec study in the README: the candidates' tokens come from one torch forward pass
(bench_special_tokens' ``dense_candidates``; content tokens, plain query tokens, no levers); 2bit codes use a codec
learned from the pooled candidates' own tokens (seed 0). The reported p is a paired randomization test against
unpooled float16. Candidates come from bench_levers.py's collections (``--cache``); without them or the datasets the
script says so and exits 0. The product's figures (a real 2bit store, several codecs) come from
``bench_maxsim.py --variants "2bit pooled stored,..."``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np  # noqa: E402
from common import (  # noqa: E402  (first: repo importable, hub off)
    THRESHOLDS,
    Candidates,
    cacm_split,
    dense_candidates,
    levers_arguments,
    machine,
    maxsim,
    torch_minilm,
)

from twostage.eval.metrics import evaluate  # noqa: E402
from twostage.eval.significance import compare  # noqa: E402
from twostage.indexes.residual import MAX_SAMPLE, ResidualCodec  # noqa: E402
from twostage.indexes.token_pooling import pool_tokens  # noqa: E402
from twostage.indexes.token_store import DEFAULT_POOL  # noqa: E402

FACTORS = (1, 1.5, 2, 2.5, 3, 4, 5, 6)
#: issue 13's size bar per passage
TARGET_BYTES = 3_200


def two_bit(passages: dict[str, np.ndarray], seed: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """Each passage's tokens through a 2bit codec learned from (up to MAX_SAMPLE of) these tokens; bytes per token."""
    every = np.concatenate(list(passages.values()))
    rng = np.random.default_rng(seed)
    sample = every[rng.choice(len(every), min(MAX_SAMPLE, len(every)), replace=False)]
    codec = ResidualCodec.train(sample, 2, n_tokens=len(every), seed=seed)
    return {d: codec.decode(*codec.encode(v)) for d, v in passages.items()}, codec.bytes_per_token


def run_of(found: Candidates, passages: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {q: {d: maxsim(found.queries["plain"][q], passages[d]) for d in docs} for q, docs in found.per_query.items()}


def top10_agreement(run: dict, base: dict) -> float:
    """Mean share of the reference's top 10 that a run keeps in its own."""

    def top(scores: dict) -> set:
        return set(sorted(scores, key=scores.get, reverse=True)[:10])

    return float(np.mean([len(top(run[q]) & top(base[q])) / 10 for q in base]))


def measure(found: Candidates, threshold: int, splits: dict[str, list[str]], factors: tuple[float, ...]) -> list[dict]:
    """One row per factor x encoding: tokens and bytes per passage, nDCG@10 per split, agreement and p vs float16."""
    plain = found.passages["plain"]
    float16_bytes = 2 * next(iter(plain.values())).shape[1]
    base = run_of(found, plain)

    def scores(run: dict, qids: list[str]):
        return evaluate(
            {q: run[q] for q in qids},
            {q: found.qrels[q] for q in qids},
            ("nDCG@10",),
            rel_threshold=threshold,
            complete=True,
        )

    reference = {split: scores(base, qids) for split, qids in splits.items()}
    rows = []
    for factor in factors:
        started = time.perf_counter()
        pooled = {d: pool_tokens(v, factor) for d, v in plain.items()}
        seconds = time.perf_counter() - started
        tokens = float(np.mean([len(v) for v in pooled.values()]))
        coded, bytes_per_token = two_bit(pooled)
        for encoding, passages in (("float16", pooled), ("2bit", coded)):
            run = run_of(found, passages)
            row = {
                "factor": factor,
                "encoding": encoding,
                "tokens_per_passage": round(tokens, 1),
                "bytes_per_passage": round(tokens * (float16_bytes if encoding == "float16" else bytes_per_token)),
                "pool_ms_per_passage": round(1000 * seconds / len(plain), 2),
                "top10_agreement": round(top10_agreement(run, base), 3),
            }
            for split, qids in splits.items():
                result = scores(run, qids)
                row[f"{split} nDCG@10"] = round(result.aggregate["nDCG@10"], 4)
                row[f"{split} p"] = round(
                    compare(reference[split].per_query, result.per_query, "nDCG@10").p_randomization, 4
                )
            rows.append(row)
    return rows


def markdown(report: dict) -> str:
    lines = [
        "# Token pooling before storage (benchmarks/bench_token_pooling.py)",
        "",
        f"MaxSim over each dataset's dense top {report['k']} (all-MiniLM-L6-v2 on torch, content tokens, plain "
        "query tokens, no levers); each passage's tokens pooled by the factor (Ward clustering, unit cluster "
        "means), kept as float16 or as 2bit codes (a codec learned from the pooled candidates, seed 0). "
        f"p: paired randomization test against factor 1, float16. {report['cpu']}; {report['seconds']} s.",
        "",
        f"What cacm-tune says: {report['choice']}",
        "",
    ]
    for name, table in report["tables"].items():
        splits = [k.removesuffix(" nDCG@10") for k in table[0] if k.endswith(" nDCG@10")]
        cols = ["factor", "encoding", "tokens_per_passage", "bytes_per_passage", "top10_agreement"]
        cols += [c for s in splits for c in (f"{s} nDCG@10", f"{s} p")]
        lines += [f"**{name}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table] + [""]
    return "\n".join(lines)


def choose(tables: dict[str, list[dict]], factor: float = DEFAULT_POOL["2bit"]) -> str:
    """What cacm-tune says of the default factor (fixed by the size rule, not here), the best 2bit factor on cacm-tune,
    and how that one fares on msmarco-dl20."""

    def row(name: str, f: float, encoding: str) -> dict:
        return next(r for r in tables[name] if r["factor"] == f and r["encoding"] == encoding)

    best = max((r for r in tables["cacm"] if r["encoding"] == "2bit"), key=lambda r: (r["tune nDCG@10"], -r["factor"]))
    pooled, dl20_best = row("cacm", factor, "2bit"), row("msmarco-dl20", best["factor"], "2bit")
    return (
        f"at the default factor {factor:g} (the size rule: 2bit under {TARGET_BYTES:,} bytes for 81-token "
        f"passages), 2bit scores {pooled['tune nDCG@10']} on cacm-tune against {row('cacm', 1, 'float16')['tune nDCG@10']}"
        f" for unpooled float16 and {row('cacm', 1, '2bit')['tune nDCG@10']} for unpooled 2bit; the best 2bit factor "
        f"on cacm-tune is {best['factor']:g} ({best['tune nDCG@10']}, held-out {best['held-out nDCG@10']}); on "
        f"msmarco-dl20 it scores {dl20_best['all nDCG@10']} against {row('msmarco-dl20', 1, 'float16')['all nDCG@10']} "
        f"for unpooled float16 (p = {dl20_best['all p']})."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    levers_arguments(parser)
    parser.add_argument("--factors", default=",".join(f"{f:g}" for f in FACTORS))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite the saved token_pooling.json's choice line and .md from its tables",
    )
    args = parser.parse_args()
    if args.report_only:
        report = json.loads((args.out / "token_pooling.json").read_text())
        return write(report | {"choice": choose(report["tables"])}, args.out)
    started = time.time()
    model = torch_minilm("bench_token_pooling", args.data, args.cache)
    if model is None:
        return 0
    factors = tuple(float(f) for f in args.factors.split(","))
    cacm = dense_candidates("cacm", args.data, args.cache, model)
    tune_qids, held_qids = cacm_split(cacm.per_query)
    tables = {"cacm": measure(cacm, THRESHOLDS["cacm"], {"tune": tune_qids, "held-out": held_qids}, factors)}
    dl20 = dense_candidates("msmarco-dl20", args.data, args.cache, model)
    tables["msmarco-dl20"] = measure(dl20, THRESHOLDS["msmarco-dl20"], {"all": list(dl20.per_query)}, factors)
    report = {
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": machine(),
        "k": 100,
        "choice": choose(tables),
        "tables": tables,
        "seconds": round(time.time() - started, 1),
    }
    return write(report, args.out)


def write(report: dict, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "token_pooling.json").write_text(json.dumps(report, indent=1))
    (out / "token_pooling.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
