"""Scale-out on this machine, in one run: indexing throughput with 1, 2 and 4 Ray encoder actors against the
single-process path, and first-stage query latency (p50/p95 at depth 100) of one collection, of 1/2/4 shards searched
in threads, and of 1/2/4 shards served by Ray actors (the Ray overhead per query).

    python benchmarks/bench_scale.py                    # writes benchmarks/results/scale.json and scale.md
    python benchmarks/bench_scale.py --passages 10000

Passages are the first N of ../shared/data/msmarco-dl20's corpus, queries its 54 queries; without that folder the
script says so and exits 0. Every encoder (the single process and each actor) runs all-MiniLM-L6-v2 on 1 torch
thread, and the embedding cache is emptied before every indexing run, so each run encodes every passage. Ray runs as
a local cluster on 127.0.0.1 with 4 logical CPUs (on this 2-core machine 4 actors share 2 cores).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import DATA_ROOT, REPO, RESULTS, minilm_path, save_results  # noqa: E402  (first: repo importable, hub off)

CACHE_DIR = Path(tempfile.mkdtemp(prefix="bench-scale-cache-"))
os.environ["TWOSTAGE_CACHE_DIR"] = str(CACHE_DIR)  # private, emptied before each indexing run
# read when ray is imported: a local cluster on 127.0.0.1 with a token of this run's own (not one written to ~/.ray)
os.environ.update(
    {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
)

from twostage.engine import Engine  # noqa: E402
from twostage.indexes.readers import read_corpus  # noqa: E402
from twostage.runtime.config import RuntimeConfig  # noqa: E402
from twostage.runtime.cpu import cpu_info  # noqa: E402

DATA = DATA_ROOT / "msmarco-dl20"
COUNTS = (1, 2, 4)
DEPTH = 100


def empty_cache() -> None:
    for path in CACHE_DIR.glob("embeddings.sqlite*"):
        path.unlink()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latencies(engines: dict[str, Engine], queries: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """Per query, one at a time, the engines taking turns on each query (so the machine's load falls on all alike):
    the whole first stage (encode, search, fetch) and the search + fetch part alone, from the same query vector."""
    vectors = next(iter(engines.values())).encoder.encode_queries(queries)
    total: dict[str, list[float]] = {name: [] for name in engines}
    lookup: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():
        engine.search(queries[0], k=DEPTH, rerank=False)  # warm
    for _ in range(rounds):
        for query, vector in zip(queries, vectors):
            for name, engine in engines.items():
                t0 = time.perf_counter()
                engine.search(query, k=DEPTH, rerank=False)
                t1 = time.perf_counter()
                hits = engine.collection.search(vector[None, :], DEPTH)
                engine.collection.get([doc_id for doc_id, _ in hits[0]])
                t2 = time.perf_counter()
                total[name].append((t1 - t0) * 1000)
                lookup[name].append((t2 - t1) * 1000)
    return {
        name: {
            "p50_ms": round(statistics.median(total[name]), 2),
            "p95_ms": round(percentile(total[name], 95), 2),
            "search_fetch_p50_ms": round(statistics.median(lookup[name]), 2),
            "search_fetch_p95_ms": round(percentile(lookup[name], 95), 2),
            "queries": len(total[name]),
        }
        for name in engines
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 54 queries per latency figure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-scale")
    args = parser.parse_args()
    if not (DATA / "corpus.jsonl").is_file():
        print(f"{DATA} is not present; nothing to measure")
        return 0
    # Ray advertises 127.0.0.1 for this machine, not its outward address: Ray reads this switch when it is imported
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    from twostage.shards.indexing import index_distributed

    model = minilm_path()
    docs = []
    for doc in read_corpus(str(DATA / "corpus.jsonl")):
        docs.append(doc)
        if len(docs) == args.passages:
            break
    queries = [
        line.split("\t", 1)[1].strip() for line in (DATA / "queries.tsv").read_text().splitlines() if "\t" in line
    ]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    one_thread = RuntimeConfig(device="cpu", backend="torch", threads=1)
    report: dict = {
        "cpu": cpu_info().model,
        "cores": os.cpu_count(),
        "passages": len(docs),
        "depth": DEPTH,
        "model": "all-MiniLM-L6-v2 (torch, 1 thread per encoder)",
        "load_average_start": os.getloadavg(),
        "indexing": [],
        "latency": [],
    }

    # ---- indexing: the single-process path, then Ray with 1, 2, 4 actors (and as many shards)
    empty_cache()
    t0 = time.perf_counter()
    with Engine.create(
        args.work / "single", model=model, reranker=None, index_type="flat", runtime=one_thread
    ) as engine:
        engine.add(docs)
        stats = engine.collection.stats()
    seconds = time.perf_counter() - t0
    report["indexing"].append(
        {
            "system": "single process (no Ray), 1 collection",
            "actors": 0,
            "shards": 1,
            "seconds": round(seconds, 1),
            "passages_per_s": round(len(docs) / seconds, 1),
            "load_average": os.getloadavg(),
        }
    )
    report["bytes_per_passage"] = {
        "vectors_flat": round(stats["vectors_bytes"] / len(docs), 1),
        "documents_sqlite": round(stats["documents_bytes"] / len(docs), 1),
        "text_chars_mean": round(statistics.mean(len(d.text) for d in docs), 1),
    }
    print(report["indexing"][-1], flush=True)
    ray_dir = tempfile.mkdtemp(prefix="bsray-", dir="/tmp")  # short: Ray's socket paths live under it
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=ray_dir,
        runtime_env={
            "env_vars": {
                "TWOSTAGE_CACHE_DIR": str(CACHE_DIR),
                "HF_HUB_OFFLINE": "1",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            }
        },
    )
    for n in COUNTS:
        empty_cache()
        t0 = time.perf_counter()
        add, size = index_distributed(
            docs,
            args.work / f"ray{n}",
            address="auto",
            shards=n,
            actors=n,
            model=model,
            index_type="flat",
            runtime=one_thread,
        )
        seconds = time.perf_counter() - t0
        report["indexing"].append(
            {
                "system": f"Ray, {n} encoder actor(s), {n} shard(s)",
                "actors": n,
                "shards": n,
                "seconds": round(seconds, 1),
                "encode_write_seconds": round(add.seconds, 1),
                "passages_per_s": round(len(docs) / seconds, 1),
                "load_average": os.getloadavg(),
            }
        )
        assert size == len(docs)
        print(report["indexing"][-1], flush=True)
    base = next(r for r in report["indexing"] if r["actors"] == 1)["passages_per_s"]
    for row in report["indexing"]:
        row["speedup_vs_1_actor"] = round(row["passages_per_s"] / base, 2)

    # ---- query latency at depth 100: one collection, N shards in threads, N shard actors, taking turns per query
    from twostage.shards.collection import RayShardedCollection

    engines = {"one collection, in process": Engine.open(args.work / "single", reranker=None, runtime=one_thread)}
    for n in COUNTS:
        engines[f"{n} shard(s), threads in process"] = Engine.open(
            args.work / f"ray{n}", reranker=None, runtime=one_thread
        )
        engines[f"{n} shard(s), Ray actors"] = Engine.open(
            args.work / f"ray{n}", reranker=None, runtime=one_thread, ray="auto"
        )
        assert isinstance(engines[f"{n} shard(s), Ray actors"].collection, RayShardedCollection)
    measured = latencies(engines, queries, args.rounds)
    for name, engine in engines.items():
        engine.close()
        shards = 1 if name.startswith("one") else int(name.split(" ", 1)[0])
        row = {"system": name, "shards": shards, **measured[name]}
        if "Ray" in name:  # Ray's overhead: the same shards searched in process, measured on the same queries
            local = measured[f"{shards} shard(s), threads in process"]
            row["ray_overhead_p50_ms"] = round(row["p50_ms"] - local["p50_ms"], 2)
            row["ray_overhead_search_fetch_p50_ms"] = round(
                row["search_fetch_p50_ms"] - local["search_fetch_p50_ms"], 2
            )
        report["latency"].append(row)
    report["load_average_end"] = os.getloadavg()
    ray.shutdown()
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    shutil.rmtree(ray_dir, ignore_errors=True)

    save_results(args.out, "scale", report, markdown(report))
    return 0


def markdown(report: dict) -> str:
    load = lambda xs: " ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    lines = [
        f"# Scale-out on one machine ({report['cpu']}, {report['cores']} cores)",
        "",
        f"{report['passages']} msmarco-dl20 passages, {report['model']}; load average "
        f"{load(report['load_average_start'])} at the start, {load(report['load_average_end'])} at the end (the "
        "benchmark's own processes count in it, up to 4 actors; other jobs on the machine inflate absolute figures); "
        "ratios were measured side by side in this run. Indexing times include starting the "
        "actors and loading one model in each.",
        "",
        "## Indexing",
        "",
        "| system | seconds | passages/s | vs 1 actor | load average (1/5/15 min) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in report["indexing"]:
        lines.append(
            f"| {r['system']} | {r['seconds']} | {r['passages_per_s']} | {r['speedup_vs_1_actor']}x | "
            f"{load(r['load_average'])} |"
        )
    lines += [
        "",
        f"## First-stage query latency at depth {report['depth']} (ms, one query at a time)",
        "",
        "| system | p50 | p95 | search+fetch p50 | search+fetch p95 | Ray overhead p50 (whole / search+fetch) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["latency"]:
        overhead = (
            f"{r['ray_overhead_p50_ms']:+} / {r['ray_overhead_search_fetch_p50_ms']:+}"
            if "ray_overhead_p50_ms" in r
            else ""
        )
        lines.append(
            f"| {r['system']} | {r['p50_ms']} | {r['p95_ms']} | {r['search_fetch_p50_ms']} | "
            f"{r['search_fetch_p95_ms']} | {overhead} |"
        )
    lines += [
        "",
        "Ray overhead: the Ray-served shards against the same shards searched by threads in this process, "
        "both measured on each query in turn. The whole first stage includes encoding the query.",
    ]
    b = report["bytes_per_passage"]
    lines += [
        "",
        f"Bytes per passage (flat index, this corpus): vectors {b['vectors_flat']}, documents.sqlite "
        f"{b['documents_sqlite']} (text of {b['text_chars_mean']} characters on average, metadata and the "
        "float32 embedding).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
