"""Ablation of the second-stage levers (issue 14) on msmarco-dl20 and cacm: score fusion, Rocchio feedback,
MaxSim query-token options and the first stage under MaxSim (dense or hybrid), each alone and the best combination,
against the dense first stage.

    python benchmarks/bench_levers.py     # writes benchmarks/results/levers.json and levers.md

Settings are chosen on one half of cacm (the queries at even positions in qid order, "cacm-tune") by nDCG@10 over a
grid, and reported on msmarco-dl20 (never tuned on) and on the other half of cacm ("cacm-held-out"); full cacm is in
the JSON for reference. Every reported system runs through ``Engine.search`` (k = 100 candidates, all reranked by
MaxSim over stored int8 tokens), one query at a time, the systems interleaved per query in rotating order so their
latencies are measured side by side. The grid's fused scores are computed from the engine's own two stage scores
with ``reranker.score_fusion.fuse_scores``, exactly what ``fusion=`` makes the engine do.

Collections (int8 tokens) are built once into ``--cache`` (default runs/bench-levers/) and reused. Without the
datasets the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np  # noqa: E402
from common import (  # noqa: E402  (first: repo importable, hub off)
    FUSION_GRID,
    THRESHOLDS,
    build_collection,
    cacm_order,
    cacm_split,
    levers_arguments,
    machine,
    markdown,
    metrics,
    minilm_path,
)

from twostage.engine import Engine  # noqa: E402
from twostage.eval.datasets import load_folder  # noqa: E402
from twostage.eval.significance import compare  # noqa: E402
from twostage.reranker.score_fusion import Fusion, fuse_scores  # noqa: E402
from twostage.retriever.biencoder import BiEncoder  # noqa: E402

K = 100
PRF_GRID = [None] + [f"{k}:{b:g}" for k in (1, 3, 5, 10) for b in (0.25, 0.5, 1.0)]
TOKEN_GRID = ["plain", "idf", "special", "idf+special"]
#: hybrid first stages are tried with feedback off and at the dense grid's best feedback (the grid stays affordable)
HYBRID_GRID = ["hybrid", "hybrid:weighted:0.5", "hybrid:weighted:0.7"]
HYBRID_PRF_GRID = [None, "10:0.5"]


@dataclass(frozen=True)
class System:
    """One reported configuration: Engine.search options (``rerank`` False = the dense first stage alone)."""

    name: str
    rerank: bool = True
    first_stage: str = "dense"
    prf: str | None = None
    query_tokens: str | None = None
    fusion: str | None = None
    default: bool = False  # the engine's own defaults (no lever named)

    def options(self) -> dict:
        """Every lever named, "none" where off, so the engine's defaults never creep in (unless ``default``)."""
        if self.default:
            return {"rerank": self.rerank}
        return {
            "rerank": self.rerank,
            "first_stage": self.first_stage,
            "prf": self.prf or "none",
            "query_tokens": self.query_tokens or "plain",
            "fusion": self.fusion or "none",
        }


@dataclass
class Measured:
    run: dict[str, dict[str, float]] = field(default_factory=dict)
    ms: list[float] = field(default_factory=list)


def ordered_run(hits) -> dict[str, float]:
    """The engine's order as scores trec_eval sorts the same way (ties in fused scores keep the engine's order)."""
    return {hit.doc_id: float(len(hits) - i) for i, hit in enumerate(hits)}


# ------------------------------------------------------------------ tuning grid
def grid_passes() -> list[tuple[str, str | None, str]]:
    """Every first stage x prf x query-token setting the tuning grid runs (each one engine pass; fusion is free)."""
    dense = [("dense", prf, tokens) for prf, tokens in itertools.product(PRF_GRID, TOKEN_GRID)]
    hybrid = list(itertools.product(HYBRID_GRID, HYBRID_PRF_GRID, TOKEN_GRID))
    return dense + hybrid


def tune(
    engine: Engine, queries: dict[str, str], qrels: dict, threshold: int, known: dict[tuple, float] | None = None
) -> dict:
    """nDCG@10 on the tuning queries for every first stage x prf x query-token x fusion setting; one engine pass per
    first stage x prf x tokens. Settings in ``known`` (an earlier run's grid, same queries) are not recomputed."""
    qids = list(queries)
    grid: dict[tuple, float] = dict(known or {})
    for first_stage, prf, tokens in grid_passes():
        if all((first_stage, prf, tokens, fusion) in grid for fusion in FUSION_GRID):
            continue
        results = engine.search_many(
            [queries[q] for q in qids],
            k=K,
            top_n=K,
            first_stage=first_stage,
            prf=prf or "none",
            query_tokens=tokens,
            fusion="none",
        )
        pairs = {}
        for qid, result in zip(qids, results):
            hits = sorted(result.hits, key=lambda h: h.retrieval_rank)  # the first stage's order
            pairs[qid] = ([h.doc_id for h in hits], [h.retrieval_score for h in hits], [h.rerank_score for h in hits])
        for fusion in FUSION_GRID:
            run = {}
            for qid, (ids, first, second) in pairs.items():
                scores = second if fusion is None else fuse_scores(first, second, Fusion.parse(fusion))
                order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
                run[qid] = {ids[i]: float(len(ids) - r) for r, i in enumerate(order)}
            grid[(first_stage, prf, tokens, fusion)] = metrics(run, qrels, threshold)[0]["nDCG@10"]
        print(f"  tuned first_stage={first_stage} prf={prf} tokens={tokens}", file=sys.stderr)
    return grid


def choose(grid: dict[tuple, float]) -> dict[str, tuple]:
    """Best setting per lever alone (the others off, dense first stage) and the best combination, by tuning
    nDCG@10; keys are (first stage, prf, query tokens, fusion)."""

    def best(keys):
        return max(keys, key=lambda key: (round(grid[key], 6), key == ("dense", None, "plain", None)))

    keys = list(grid)
    dense = [k for k in keys if k[0] == "dense"]
    return {
        "fusion": best([k for k in dense if k[1] is None and k[2] == "plain" and k[3] not in (None, "rrf")]),
        "rrf": ("dense", None, "plain", "rrf"),
        "prf": best([k for k in dense if k[1] is not None and k[2] == "plain" and k[3] is None]),
        "tokens": best([k for k in dense if k[1] is None and k[3] is None and k[2] != "plain"]),
        "first stage": best([k for k in keys if k[0] != "dense" and k[1] is None and k[2] == "plain" and k[3] is None]),
        "combination": best(keys),
    }


def systems_from(choice: dict[str, tuple]) -> list[System]:
    _, prf, _, _ = choice["prf"]
    hybrid = choice["first stage"][0]
    out = [
        System("dense", rerank=False),
        System(f"dense+prf {prf}", rerank=False, prf=prf),
        System(hybrid, rerank=False, first_stage=hybrid),
        System("dense+maxsim"),
        System(f"+ fusion {choice['fusion'][3]}", fusion=choice["fusion"][3]),
        System("+ fusion rrf", fusion="rrf"),
        System(f"+ prf {prf}", prf=prf),
    ]
    out += [System(f"+ tokens {t}", query_tokens=t) for t in TOKEN_GRID[1:]]
    out.append(System(f"{hybrid}+maxsim", first_stage=hybrid))
    s, p, t, f = choice["combination"]
    out.append(System(f"best: {s} / prf {p} / tokens {t} / fusion {f}", first_stage=s, prf=p, query_tokens=t, fusion=f))
    out.append(System("engine default (MAXSIM_DEFAULTS)", default=True))
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------ reporting
def measure(engine: Engine, systems: list[System], queries: dict[str, str]) -> dict[str, Measured]:
    """Each system over every query, one query at a time, systems interleaved in rotating order per query."""
    out = {s.name: Measured() for s in systems}
    for s in systems:  # untimed warm-up (lazy loading, the IDF table's first count)
        engine.search(next(iter(queries.values())), k=K, top_n=K, **s.options())
    for i, (qid, query) in enumerate(queries.items()):
        for j in range(len(systems)):
            s = systems[(i + j) % len(systems)]
            start = time.perf_counter()
            result = engine.search(query, k=K, top_n=K, **s.options())
            out[s.name].ms.append(1000 * (time.perf_counter() - start))
            out[s.name].run[qid] = ordered_run(result.hits)
    return out


def report(measured: dict[str, Measured], qrels: dict, threshold: int, qids: list[str]) -> list[dict]:
    rows = []
    base = metrics({q: measured["dense"].run[q] for q in qids}, qrels, threshold)[1]
    for name, m in measured.items():
        aggregate, per_query = metrics({q: m.run[q] for q in qids}, qrels, threshold)
        row = {"system": name, **{k: round(v, 4) for k, v in aggregate.items()}, "queries": len(qids)}
        if name != "dense":
            for measure_name in ("nDCG@10", "MRR@10"):
                c = compare(base, per_query, measure_name)
                row[f"p {measure_name}"] = round(c.p_randomization, 4)
                row[f"p t {measure_name}"] = round(c.p_ttest, 4)
        index = {q: i for i, q in enumerate(measured["dense"].run)}
        ms = [m.ms[index[q]] for q in qids]
        row["median ms"] = round(statistics.median(ms), 1)
        row["p95 ms"] = round(float(np.percentile(ms, 95)), 1)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    levers_arguments(parser, "where the collections are built (once) and reused")
    parser.add_argument(
        "--grid",
        type=Path,
        default=None,
        metavar="LEVERS.JSON",
        help="reuse the tuning grid of an earlier levers.json (same tuning queries): only settings "
        "it lacks are computed",
    )
    args = parser.parse_args()
    if not (args.data / "msmarco-dl20").is_dir() or not (args.data / "cacm").is_dir():
        print(f"bench_levers: msmarco-dl20 and cacm not found in {args.data}; nothing to do")
        return 0
    started = time.time()
    encoder = BiEncoder(minilm_path())
    sets = {name: load_folder(args.data / name) for name in ("cacm", "msmarco-dl20")}
    builds = {name: build_collection(ds, encoder, args.cache / name) for name, ds in sets.items()}

    cacm = sets["cacm"]
    tune_qids, held_qids = cacm_split(cacm.queries)
    engines = {name: Engine.open(args.cache / name, encoder=encoder, reranker="maxsim") for name in sets}
    known = {}
    if args.grid is not None:
        saved = json.loads(args.grid.read_text())
        if saved["tuned_on"]["queries"] != tune_qids:
            raise SystemExit(f"{args.grid}: tuned on other queries than this run's cacm-tune")
        known = {
            (g.get("first_stage", "dense"), g["prf"], g["query_tokens"], g["fusion"]): g["nDCG@10"]
            for g in saved["grid"]
        }
        print(f"tuning grid from {args.grid} ({len(known)} settings)", file=sys.stderr)
    print(f"tuning on {len(tune_qids)} cacm queries", file=sys.stderr)
    grid = tune(engines["cacm"], {q: cacm.queries[q] for q in tune_qids}, cacm.qrels, 1, known)
    choice = choose(grid)
    systems = systems_from(choice)
    print(f"chosen: {choice}", file=sys.stderr)

    tables, load = {}, {}
    for name, ds in sets.items():
        print(f"measuring {len(systems)} systems on {name}", file=sys.stderr)
        measured = measure(engines[name], systems, dict(ds.queries))
        load[name] = os.getloadavg()
        if name == "cacm":
            tables["cacm-held-out"] = report(measured, ds.qrels, 1, held_qids)
            tables["cacm (all; half tuned on)"] = report(measured, ds.qrels, 1, cacm_order(cacm.queries))
        else:
            tables[name] = report(measured, ds.qrels, THRESHOLDS[name], list(ds.queries))
    for engine in engines.values():
        engine.close()

    cpu = machine()
    result = {
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": cpu,
        "load_average_after": load,
        "k": K,
        "tuned_on": {"dataset": "cacm", "queries": tune_qids, "measure": "nDCG@10"},
        "grid": [
            {"first_stage": s, "prf": p, "query_tokens": t, "fusion": f, "nDCG@10": round(v, 4)}
            for (s, p, t, f), v in grid.items()
        ],
        "chosen": {
            k: {
                "first_stage": v[0],
                "prf": v[1],
                "query_tokens": v[2],
                "fusion": v[3],
                "tune nDCG@10": round(grid[v], 4),
            }
            for k, v in choice.items()
        },
        "tables": tables,
        "collections": builds,
        "seconds": round(time.time() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "levers.json").write_text(json.dumps(result, indent=1))
    md = [
        "# Second-stage levers: ablation (benchmarks/bench_levers.py)",
        "",
        f"Settings chosen on {len(tune_qids)} cacm queries (even positions in qid order) by nDCG@10; "
        f"msmarco-dl20 and the {len(held_qids)} held-out cacm queries were never tuned on. k = {K} candidates, all "
        "reranked (MaxSim over stored int8 tokens). p: paired randomization test (10,000 resamples) against dense. "
        f"Latency per query through Engine.search, systems interleaved per query; CPU: {cpu}; load average after "
        f"each dataset: {', '.join(f'{k} {v[0]:.2f} {v[1]:.2f} {v[2]:.2f}' for k, v in load.items())}.",
        "",
        "Chosen on cacm-tune: "
        + "; ".join(
            f"{k}: {v[0]}, prf {v[1]}, tokens {v[2]}, fusion {v[3]} (nDCG@10 {grid[v]:.4f})" for k, v in choice.items()
        ),
        "",
    ]
    for title, table in tables.items():
        md += [markdown(table, title), ""]
    (args.out / "levers.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
