"""MaxSim reranking on msmarco-dl20: the dense first stage vs dense + MaxSim at depths 20/50/100, with passage tokens
stored at index time (pq, 2bit, 1bit, int8 or float16; 2bit also pooled, the default store) and encoded on the fly: nDCG@10, MRR@10 and R@100 (label >= 2),
per-query latency by stage, bytes per passage, and the index-time cost of storing tokens.

    python benchmarks/bench_maxsim.py     # writes benchmarks/results/maxsim.json and maxsim.md
    python benchmarks/bench_maxsim.py --variants "pq stored,2bit stored,float16 stored" --index-sample 0

The collection (float16 tokens) is built once into runs/bench-maxsim/ and reused; the other stores are derived from
it exactly as indexing would write them (int8 rows, pooled first for a pooled store, which a 2bit/1bit store then
re-encodes with a codec learned from them; pq likewise). Without ../shared/data/msmarco-dl20 the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np  # noqa: E402
from common import DATA_ROOT, REPO, RESULTS, machine, minilm_path  # noqa: E402  (first: repo importable, hub off)

from twostage.engine import Engine  # noqa: E402
from twostage.eval.datasets import Dataset, load_folder  # noqa: E402
from twostage.eval.metrics import evaluate  # noqa: E402
from twostage.eval.significance import compare  # noqa: E402
from twostage.indexes.documents import Document  # noqa: E402
from twostage.indexes.token_store import DEFAULT_POOL, LEARNED, TokenStore  # noqa: E402
from twostage.reranker.maxsim import MaxSimReranker  # noqa: E402
from twostage.retriever.biencoder import BiEncoder  # noqa: E402
from twostage.runtime.cpu import cpu_info  # noqa: E402

DATA = DATA_ROOT / "msmarco-dl20"
CACHE = REPO / "runs" / "bench-maxsim"
MEASURES = ("nDCG@10", "MRR@10", "R@100")
DEPTHS = (20, 50, 100)
#: "ENCODING stored" is unpooled; "ENCODING pooled stored" pooled by --pool (default: what a new 2bit collection gets)
VARIANTS = (
    "2bit pooled stored",
    "pq stored",
    "2bit stored",
    "1bit stored",
    "int8 stored",
    "float16 stored",
    "on the fly",
)


@dataclass
class SystemRun:
    """One system's TREC run and per-query stage timings (milliseconds)."""

    name: str
    depth: int
    run: dict[str, dict[str, float]] = field(default_factory=dict)
    encode_ms: list[float] = field(default_factory=list)
    search_ms: list[float] = field(default_factory=list)
    rerank_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)


def documents(dataset: Dataset) -> list[Document]:
    return [Document(row["id"], row["text"], row.get("title") or None) for row in dataset.iter_corpus()]


def build_collection(docs: list[Document], encoder: BiEncoder, path: Path) -> dict:
    """The dl20 collection with float16 tokens, built once (its build record is reused on later runs)."""
    record = path / "build.json"
    if record.is_file():
        info = json.loads(record.read_text())
        if info.get("documents") == len(docs):
            return info
    print(f"building {path} ({len(docs)} passages, float16 tokens; once)", file=sys.stderr)
    engine = Engine.create(
        path, encoder=encoder, reranker=None, index_type="flat", overwrite=True, store_tokens="float16"
    )
    with engine:
        report = engine.add(docs)
    info = {"documents": len(docs), "seconds": round(report.seconds, 1)}
    record.write_text(json.dumps(info))
    return info


def derived_store(
    source: TokenStore, doc_ids: list[str], path: Path, encoding: str, pool: float = 1.0
) -> tuple[TokenStore, float | None]:
    """A store holding exactly what indexing with ``encoding`` (and ``--token-pool pool``) would write from the same
    float16 tokens (for 2bit / 1bit / pq: int8 rows, then the codec learned from them and the rows re-encoded), and the
    seconds that last step took."""
    store = TokenStore.open(path, encoding=encoding, pool=pool)
    seconds = None  # reused from an earlier run
    if len(store) != len(doc_ids) or (encoding in LEARNED and store.codec is None):
        for start in range(0, len(doc_ids), 1000):
            chunk = doc_ids[start : start + 1000]
            store.put_many(chunk, source.get_many(chunk))
        started = time.perf_counter()
        store.train_pending()
        seconds = round(time.perf_counter() - started, 1)
    return store, seconds


def seeded_store(
    int8_path: Path, path: Path, encoding: str, seed: int, pool: float | None = None
) -> tuple[TokenStore, float | None]:
    """The int8 rows with an ``encoding`` codec learned from ``seed`` (indexing's own codec is seed 0), pooled by
    ``pool`` (``twostage tokens --convert --pool``), built once: how much one learned codec's draw moves the scores,
    which a single store cannot tell."""
    seconds = None
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        with closing(sqlite3.connect(int8_path)) as source, closing(sqlite3.connect(partial)) as copy:
            source.backup(copy)
        store = TokenStore.open(partial, encoding="int8")
        started = time.perf_counter()
        store.convert(encoding, seed=seed, pool=pool)
        seconds = round(time.perf_counter() - started, 1)
        store.close()
        os.replace(partial, path)
    return TokenStore.open(path, encoding=encoding), seconds


def codec_spread(runs: dict[tuple[str, int], SystemRun], dataset: Dataset, variants: list[str], seeds: int) -> dict:
    """Per learned encoding with extra seeds, at each depth: every codec's nDCG@10 minus float16's (seed 0 first) and
    their mean; and, per query, the codecs' mean against float16's: a paired randomization test and a 95% t interval
    of the mean difference, which say whether these queries can tell the loss from none, or from the 0.005 bar."""
    from scipy import stats

    def per_query(key: tuple[str, int]) -> dict[str, float]:
        scores = evaluate(runs[key].run, dataset.qrels, ("nDCG@10",), rel_threshold=2, complete=True).per_query
        return {q: v["nDCG@10"] for q, v in scores.items()}

    out = {}
    for name in variants:
        names = [name] + [f"{name}, seed {k}" for k in range(1, seeds + 1)]
        if name.split()[0] not in LEARNED or not seeds or any((n, DEPTHS[0]) not in runs for n in names):
            continue
        out[name] = {}
        for depth in DEPTHS:
            base = per_query(("float16 stored", depth))
            qids = list(base)
            diffs = np.array([[codec[q] - base[q] for q in qids] for codec in (per_query((n, depth)) for n in names)])
            per_q = diffs.mean(axis=0)  # each query's loss, averaged over the codecs
            half = float(stats.t.ppf(0.975, len(qids) - 1) * per_q.std(ddof=1) / np.sqrt(len(qids)))
            test = compare(
                {q: {"nDCG@10": base[q]} for q in qids},
                {q: {"nDCG@10": base[q] + d} for q, d in zip(qids, per_q)},
                "nDCG@10",
            )
            out[name][depth] = {
                "each": [round(float(d), 4) for d in diffs.mean(axis=1)],
                "mean": round(float(per_q.mean()), 4),
                "ci95": [round(float(per_q.mean()) - half, 4), round(float(per_q.mean()) + half, 4)],
                "p": round(test.p_randomization, 4),
            }
    return out


def index_cost(docs: list[Document], model: str, sample: int) -> dict:
    """Seconds to index ``sample`` passages without and with token storage, side by side, cache off."""
    encoder = BiEncoder(model, cache=None)
    subset = docs[:sample]
    out: dict = {"passages": len(subset)}
    with tempfile.TemporaryDirectory() as tmp:
        for label, store_tokens in (("dense only", False), ("with int8 tokens", True), ("dense only, again", False)):
            engine = Engine.create(
                Path(tmp) / label, encoder=encoder, reranker=None, index_type="flat", store_tokens=store_tokens
            )
            with engine:
                out[label] = round(engine.add(subset).seconds, 2)
    dense = (out["dense only"] + out["dense only, again"]) / 2
    out["extra_fraction"] = round(out["with int8 tokens"] / dense - 1, 3)
    return out


#: search options per ``--levers``: "off" is plain MaxSim (the baseline issue 13 measured against), "default" the
#: engine's defaults for a MaxSim search (pseudo-relevance feedback, special query tokens, score fusion)
LEVERS = {"off": {"prf": "none", "query_tokens": "plain", "fusion": "none"}, "default": {}}


def run_queries(
    engines: dict[tuple[str, int], Engine], queries: dict[str, str], levers: dict | None = None
) -> dict[tuple[str, int], SystemRun]:
    """Every query through every system, one at a time, interleaved so CPU contention hits all systems alike."""
    levers = levers or {}
    runs = {key: SystemRun(*key) for key in engines}
    warm = list(queries.values())[:2]
    for engine in engines.values():
        for query in warm:
            engine.search(query, k=20, top_n=20, **levers)
    for n, (qid, query) in enumerate(queries.items(), start=1):
        for (name, depth), engine in engines.items():
            started = time.perf_counter()
            result = engine.search(query, k=depth, top_n=depth, rerank=name != "dense", **levers)
            total = time.perf_counter() - started
            run = runs[(name, depth)]
            run.run[qid] = {hit.doc_id: float(len(result.hits) - i) for i, hit in enumerate(result.hits)}
            run.encode_ms.append(result.timings.encode_s * 1000)
            run.search_ms.append(result.timings.search_s * 1000)
            run.rerank_ms.append(result.timings.rerank_s * 1000)
            run.total_ms.append(total * 1000)
        print(f"\rqueries {n}/{len(queries)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return runs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(run: SystemRun, dataset: Dataset) -> dict:
    scores = evaluate(run.run, dataset.qrels, MEASURES, rel_threshold=2).aggregate
    row = {"system": run.name, "depth": run.depth, **{m: round(scores[m], 4) for m in MEASURES}}
    for stage in ("encode", "search", "rerank", "total"):
        values = getattr(run, f"{stage}_ms")
        row[f"{stage}_median_ms"] = round(statistics.median(values), 1)
        row[f"{stage}_p95_ms"] = round(percentile(values, 0.95), 1)
    return row


def storage(store: TokenStore, dim: int) -> dict:
    stats = store.stats()
    return {
        "encoding": store.encoding + (f" pooled by {store.pool:g}" if store.pool != 1.0 else ""),
        "passages": stats.passages,
        "tokens_per_passage": round(stats.tokens_per_passage, 1),
        "codec_bytes": stats.codec_bytes,
        "codec_bytes_per_passage": round(stats.codec_bytes / max(stats.passages, 1), 1),
        "bytes_per_token": round(stats.payload_bytes / max(stats.tokens, 1), 1),
        "bytes_per_passage": round(stats.bytes_per_passage, 1),
        "total_mb": round(stats.payload_bytes / 1e6, 1),
        "dense_vector_bytes": dim * 4,
    }


def markdown(report: dict) -> str:
    """The README table and the storage / index-time lines."""
    lines = [
        f"MaxSim over all-MiniLM-L6-v2 token embeddings, msmarco-dl20 ({report['queries']} queries, "
        f"{report['passages']:,}-passage pool), search options {report.get('levers', 'off')} "
        f"({'plain MaxSim' if report.get('levers', 'off') == 'off' else 'the engine defaults for MaxSim'}), "
        f"{report['machine']}. Latency is per query, one query at a time, "
        "in milliseconds (median / p95); `rerank` includes MaxSim's own query encoding.",
        "",
        "| system | depth | nDCG@10 | MRR@10 | R@100 | encode | search | rerank | total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        name = "dense first stage" if row["system"] == "dense" else f"+ MaxSim, {row['system']}"
        cells = [name, str(row["depth"])] + [f"{row[m]:.4f}" for m in MEASURES]
        cells += [
            f"{row[f'{s}_median_ms']:.0f} / {row[f'{s}_p95_ms']:.0f}" for s in ("encode", "search", "rerank", "total")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("R@100 is measured on the returned list, so at depth 20 and 50 it is the first stage's R@20 / R@50.")
    lines.append("")
    for s in report["storage"]:
        codec = (
            f"; plus the codec, {s['codec_bytes']:,} bytes = {s['codec_bytes_per_passage']:,.0f} per passage of "
            f"this pool"
            + (
                f"; learning it and re-encoding the int8 rows took {s['codec_seconds']} s"
                if s["codec_seconds"] is not None
                else "; the store was reused from an earlier run"
            )
            if s["codec_bytes"]
            else ""
        )
        lines.append(
            f"- {s['encoding']} tokens: {s['bytes_per_passage']:,.0f} bytes per passage ({s['tokens_per_passage']} "
            f"tokens x {s['bytes_per_token']} bytes), {s['total_mb']} MB for the pool "
            f"(the dense vector is {s['dense_vector_bytes']} bytes){codec}."
        )
    cost = report["index_cost"]
    lines.append(
        f"- Index time, {cost['passages']} passages, cache off: dense only {cost['dense only']} s / "
        f"{cost['dense only, again']} s, with int8 tokens {cost['with int8 tokens']} s "
        f"({cost['extra_fraction']:+.0%}; one forward pass gives both the dense vector and the tokens)"
        + (f" [{cost['carried_over']}]." if cost.get("carried_over") else ".")
    )
    for variant, diffs in report["vs_float16_ndcg"].items():
        lines.append(f"- {variant} vs float16 nDCG@10 difference, per depth: {diffs}.")
    for variant, per_depth in report.get("codec_spread", {}).items():
        k = len(next(iter(per_depth.values()))["each"])
        lines.append(
            f"- {variant} over {k} learned codecs (seed 0 = indexing's own, then seeds 1..{k - 1}), nDCG@10 "
            "minus float16's, mean (each) [95% interval of the mean over queries; paired p]: "
            + "; ".join(
                f"depth {d}: {v['mean']:+.4f} ({', '.join(f'{x:+.4f}' for x in v['each'])})"
                + (f" [{v['ci95'][0]:+.4f} to {v['ci95'][1]:+.4f}; p = {v['p']:.2f}]" if "ci95" in v else "")
                for d, v in per_depth.items()
            )
            + "."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"dataset folder (default {DATA})")
    parser.add_argument(
        "--cache", type=Path, default=CACHE, help=f"where the collection is built once (default {CACHE})"
    )
    parser.add_argument("--model", default=None, help="bi-encoder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument(
        "--index-sample",
        type=int,
        default=500,
        help="passages for the index-time comparison (0: skip it, keeping the last report's figures)",
    )
    parser.add_argument(
        "--levers",
        choices=tuple(LEVERS),
        default="off",
        help="off: plain MaxSim (default); default: the engine's default search options for MaxSim",
    )
    parser.add_argument(
        "--pool",
        type=float,
        default=DEFAULT_POOL["2bit"],
        metavar="F",
        help=f"the token pool factor of the 'pooled' variants (default {DEFAULT_POOL['2bit']:g})",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated MaxSim variants to run (default all: {', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--codec-seeds",
        type=int,
        default=0,
        metavar="N",
        help="also learn N more codecs (seeds 1..N) for each learned encoding run (2bit, 1bit, pq) "
        "and report the mean nDCG@10 difference to float16 over all of them",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared CPU)")
    parser.add_argument("--queries", type=int, default=None, help="only the first N queries (a quick look)")
    parser.add_argument("--build-only", action="store_true", help="build the cached collection and stop")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where maxsim.json / maxsim.md go")
    args = parser.parse_args(argv)

    if not args.data.is_dir():
        print(f"skipped: {args.data} is not present (the msmarco-dl20 data lives in ../shared/data)")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    model = args.model or minilm_path()
    dataset = load_folder(args.data)
    docs = documents(dataset)
    encoder = BiEncoder(model)
    build = build_collection(docs, encoder, args.cache / "collection")
    if args.build_only:
        print(json.dumps(build))
        return 0

    engine = Engine.open(args.cache / "collection", encoder=encoder, reranker="maxsim")
    fp16 = engine.collection.token_store
    assert fp16 is not None and fp16.encoding == "float16"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    stores: dict[str, TokenStore] = {"float16": fp16}
    codec_seconds: dict[str, float | None] = {"float16": None}

    def file_name(key: str) -> str:  # "2bit pooled" -> tokens-2bit-pool2.5
        encoding, *pooled = key.split()
        return f"tokens-{encoding}" + (f"-pool{args.pool:g}" if pooled else "")

    for name in variants:
        key, encoding = name.removesuffix(" stored"), name.split()[0]
        if name.endswith("stored") and key != "float16":
            pool = args.pool if "pooled" in key else 1.0
            stores[key], codec_seconds[key] = derived_store(
                fp16, [d.id for d in docs], args.cache / f"{file_name(key)}.sqlite", encoding, pool
            )
    seeded: list[str] = []
    if args.codec_seeds > 0:
        int8_path = args.cache / "tokens-int8.sqlite"
        if "int8" not in stores:
            derived_store(fp16, [d.id for d in docs], int8_path, "int8")[0].close()
        for base in [e for e in stores if e.split()[0] in LEARNED]:
            for seed in range(1, args.codec_seeds + 1):
                key = f"{base} stored, seed {seed}"
                stores[key], codec_seconds[key] = seeded_store(
                    int8_path,
                    args.cache / f"{file_name(base)}-seed{seed}.sqlite",
                    base.split()[0],
                    seed,
                    args.pool if "pooled" in base else None,
                )
                seeded.append(key)
    rerankers = {
        (e if e in seeded else f"{e} stored"): MaxSimReranker(encoder, token_store=s.get_many)
        for e, s in stores.items()
        if e != "float16"
    }
    rerankers["float16 stored"] = engine.reranker  # the product wiring: "maxsim" on a collection with stored tokens
    rerankers["on the fly"] = MaxSimReranker(encoder)
    engines: dict[tuple[str, int], Engine] = {("dense", 100): Engine(engine.collection, encoder, None)}
    for depth in DEPTHS:
        for name in variants + seeded:
            engines[(name, depth)] = Engine(engine.collection, encoder, rerankers[name])
    queries = dict(list(dataset.queries.items())[: args.queries])
    runs = run_queries(engines, queries, LEVERS[args.levers])
    rows = [summarize(run, dataset) for run in runs.values()]
    by_key = {(r["system"], r["depth"]): r for r in rows}
    previous = args.out / "maxsim.json"
    if args.index_sample:
        cost = index_cost(docs, model, args.index_sample)
    else:  # skipped: the last report's figures, saying so
        last = json.loads(previous.read_text()) if previous.is_file() else {}
        cost = dict(last.get("index_cost") or {}) or None
        if cost is None:
            parser.error("--index-sample 0 needs an earlier maxsim.json to take the index-time figures from")
        cost.setdefault("carried_over", f"not rerun: from the earlier report, {last.get('machine', 'machine unknown')}")
    cpu = cpu_info()
    report = {
        "dataset": str(args.data),
        "queries": len(queries),
        "passages": len(docs),
        "model": args.model or "sentence-transformers/all-MiniLM-L6-v2 (the packaged copy)",
        "machine": f"{machine()}, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at the end",
        "cpu": {"model": cpu.model, "isa": list(cpu.isa), "platform": platform.machine()},
        "levers": args.levers,
        "pool": args.pool if any("pooled" in v for v in variants) else None,
        "rows": rows,
        "storage": [
            {**storage(s, encoder.dimension), "codec_seconds": codec_seconds[e]}
            for e, s in stores.items()
            if e not in seeded
        ],
        "codec_spread": codec_spread(runs, dataset, variants, args.codec_seeds),
        "index_cost": cost,
        "collection_build": build,
        "vs_float16_ndcg": {
            name: {d: round(by_key[(name, d)]["nDCG@10"] - by_key[("float16 stored", d)]["nDCG@10"], 4) for d in DEPTHS}
            for name in variants
            if name != "float16 stored" and ("float16 stored", DEPTHS[0]) in by_key
        },
    }
    engine.close()
    for encoding, store in stores.items():
        if encoding != "float16":
            store.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "maxsim.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "maxsim.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
