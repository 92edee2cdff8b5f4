"""A query's forward passes in the default search: the first stage's query vector and MaxSim's query tokens from one
pass (``runtime.light.RecentOutputs``) against a pass each, side by side in one run.

    python benchmarks/bench_query_latency.py                 # msmarco-dl20's pool and 54 queries
    python benchmarks/bench_query_latency.py --passages 5000     # the first 5,000 documents

The collection is built once with ``twostage index --store-tokens`` (the default 2bit tokens). Two measurements, the
two settings taking turns:

- per query, in one process (what a server or a library caller sees): ``Engine.search`` with MaxSim at depth 100,
  each query searched once per setting with nothing remembered beforehand (every query is new to it);
- whole processes: ``twostage search DIR --queries Q --run R --reranker maxsim``, the memory switched off in the child
  for the "two passes" case; the run files' top 10s and nDCG@10 are compared.

Without ../shared/data the script says so and exits 0. Results: benchmarks/results/query_latency.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from common import DATA_ROOT, REPO, RESULTS, THRESHOLDS, machine, metrics, save_results  # first: repo importable

from twostage.eval.trec import ranked, read_qrels, read_run  # noqa: E402

SETTINGS = ("one pass", "two passes")
CHILD = """
import sys
import twostage.runtime.light as light
if sys.argv.pop(1) == "two passes":
    light.RECENT_BYTES = 0
from twostage.cli import main
sys.argv[0] = "twostage"
raise SystemExit(main())
"""


def per_query(collection: Path, queries: list[str]) -> dict[str, list[float]]:
    """Milliseconds per ``Engine.search`` for each setting, the settings alternating query by query."""
    from twostage.engine import Engine
    from twostage.runtime.light import RECENT_BYTES

    warnings.simplefilter("ignore")
    engine = Engine.open(collection, reranker="maxsim")
    recent = engine.encoder.light.recent if engine.encoder.light is not None else None
    if recent is None:
        raise SystemExit("the collection's backend has no torch-free model: nothing to compare")
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    engine.search("a first query to warm the model up", candidate_depth=100)
    for i, query in enumerate(queries):
        for setting in SETTINGS if i % 2 == 0 else SETTINGS[::-1]:
            recent.clear()
            recent.max_bytes = RECENT_BYTES if setting == "one pass" else 0
            started = time.perf_counter()
            engine.search(query, candidate_depth=100)
            times[setting].append((time.perf_counter() - started) * 1000)
    engine.close()
    return times


def whole_processes(collection: Path, queries_file: Path, work: Path, rounds: int) -> dict[str, dict]:
    """Seconds of ``twostage search --queries`` per setting (``rounds`` each, alternating) and their run files."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out: dict[str, dict] = {s: {"seconds": []} for s in SETTINGS}
    for r in range(rounds):
        for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
            run = work / f"{setting.replace(' ', '-')}.trec"
            command = [sys.executable, "-c", CHILD, setting, "search", str(collection), "--queries", str(queries_file)]
            command += ["--run", str(run), "--reranker", "maxsim", "--candidate-depth", "100"]
            started = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"twostage search failed ({done.returncode}): {done.stderr.strip()[-600:]}")
            out[setting]["seconds"].append(round(time.perf_counter() - started, 2))
            out[setting]["run"] = read_run(run)
    return out


def top10(run: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """Each query's ten best documents, in trec_eval's order."""
    return {q: [doc for doc, _ in ranked(scores)[:10]] for q, scores in run.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "msmarco-dl20")
    parser.add_argument("--passages", type=int, default=0, help="the first N documents of the corpus (0: all)")
    parser.add_argument("--rounds", type=int, default=7, help="whole-process rounds per setting")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-query-latency")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"no {args.data}/corpus.jsonl: nothing to measure", file=sys.stderr)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    collection, corpus = args.work / f"dl20-{args.passages or 'all'}", args.work / "corpus.jsonl"
    if not (collection / "manifest.json").is_file():
        lines = (args.data / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
        corpus.write_text("\n".join(lines[: args.passages or None]) + "\n", encoding="utf-8")
        print(f"indexing {collection} with --store-tokens (once)", file=sys.stderr)
        build = [sys.executable, "-m", "twostage.cli", "index", str(corpus), "--index", str(collection)]
        subprocess.run([*build, "--store-tokens", "-q"], check=True)
    rows = [line.split("\t", 1) for line in (args.data / "queries.tsv").read_text(encoding="utf-8").splitlines()]
    queries = [text for _, text in rows]
    load_before = os.getloadavg()
    times = per_query(collection, queries)
    with tempfile.TemporaryDirectory() as scratch:
        processes = whole_processes(collection, args.data / "queries.tsv", Path(scratch), args.rounds)
    runs = {s: processes[s].pop("run") for s in SETTINGS}
    first, second = (top10(runs[s]) for s in SETTINGS)
    moved = sum(first[q] != second.get(q) for q in first)
    qrels = read_qrels(args.data / "qrels.txt")
    ndcg = {s: round(metrics(runs[s], qrels, THRESHOLDS["msmarco-dl20"])[0]["nDCG@10"], 4) for s in SETTINGS}
    report = {
        "machine": machine(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "documents": len(corpus.read_text(encoding="utf-8").splitlines()) if corpus.is_file() else None,
        "queries": len(queries),
        "collection": json.loads((collection / "manifest.json").read_text(encoding="utf-8")).get("extra", {}),
        "per_query_ms": {
            s: {"median": round(statistics.median(t), 2), "p95": round(sorted(t)[int(0.95 * (len(t) - 1))], 2)}
            for s, t in times.items()
        },
        "processes_s": {
            s: {"median": statistics.median(p["seconds"]), "all": p["seconds"]} for s, p in processes.items()
        },
        "queries_with_another_top10": moved,
        "ndcg@10": ndcg,
        "command": " ".join(["python benchmarks/bench_query_latency.py", *sys.argv[1:]]),
    }
    one, two = (report["per_query_ms"][s]["median"] for s in SETTINGS)
    report["per_query_ratio"] = round(one / two, 3)
    lines = [
        "# Query latency: one forward pass per query (benchmarks/bench_query_latency.py)",
        "",
        f"CPU: {report['machine']}; load average before {report['load_before']}, after {report['load_after']}.",
        f"msmarco-dl20, {report['documents']} documents, collection {report['collection']}; {len(queries)} queries; "
        "MaxSim at depth 100.",
        "",
        "| setting | per query, median ms | p95 ms | `twostage search --queries`, median s | nDCG@10 |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {s} | {report['per_query_ms'][s]['median']} | {report['per_query_ms'][s]['p95']} | "
            f"{report['processes_s'][s]['median']} | {ndcg[s]} |"
            for s in SETTINGS
        ),
        "",
        f"One pass / two passes, per query: {report['per_query_ratio']}. Queries whose top 10 differ between the "
        f"settings' run files: {moved} of {len(first)} (a batch of queries pads differently from the single pass).",
    ]
    save_results(RESULTS, "query_latency", report, "\n".join(lines) + "\n")
    print(json.dumps(report["per_query_ms"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
