"""Which lexical first stage a collection keeps: SQLite FTS5 bm25() inside documents.sqlite (``indexes.lexical``)
against bm25s (``benchmarks/bm25_baseline.py``, what eval used), on msmarco-dl20 and cacm: nDCG@10, R@100, build time and per-query
latency, measured side by side in one run.

    python benchmarks/bench_lexical.py [--data DIR]   # writes benchmarks/results/lexical.json and lexical.md

DIR defaults to $TWOSTAGE_DATA, else ../shared/data beside the checkout; a dataset that is absent is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bm25_baseline import BM25Retriever  # noqa: E402
from common import DATA_ROOT, RESULTS  # noqa: E402  (first: repo importable, hub off)

from twostage.eval.datasets import load_dataset  # noqa: E402
from twostage.eval.harness import default_rel_threshold  # noqa: E402
from twostage.eval.metrics import evaluate  # noqa: E402
from twostage.indexes.document_store import DocumentStore  # noqa: E402
from twostage.indexes.documents import Document  # noqa: E402
from twostage.indexes.lexical import LexicalIndex  # noqa: E402

DATASETS = ("msmarco-dl20", "cacm")
DEPTH = 1000
MEASURES = ("nDCG@10", "R@100", "MRR@10", "R@1000", "MAP")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{os.cpu_count()} x {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"{os.cpu_count()} x {platform.processor() or platform.machine()}"


def _run_queries(search, queries: dict[str, str]) -> tuple[dict[str, dict[str, float]], list[float]]:
    """One query at a time (after one warm-up), so the times are per-query latencies."""
    qids = list(queries)
    search(queries[qids[0]])
    run, times = {}, []
    for qid in qids:
        start = time.perf_counter()
        hits = search(queries[qid])
        times.append((time.perf_counter() - start) * 1000)
        run[qid] = dict(hits)
    return run, times


def measure(name: str, folder: Path) -> dict:
    dataset = load_dataset(folder)
    docs = [Document(d["id"], d["text"], d["title"] or None) for d in dataset.iter_corpus()]
    rel = default_rel_threshold(name)
    out: dict = {"dataset": name, "documents": len(docs), "queries": len(dataset.queries), "rel_threshold": rel}

    started = time.perf_counter()
    bm25s = BM25Retriever.build(docs, k1=0.9, b=0.4, stemmer="english")
    bm25s_build = time.perf_counter() - started
    import bm25s as bm25s_package

    run, times = _run_queries(lambda q: bm25s.search([q], DEPTH)[0], dataset.queries)
    out["bm25s"] = _summary(
        run,
        times,
        dataset.qrels,
        rel,
        bm25s_build,
        f"bm25s {bm25s_package.__version__}, Lucene BM25 k1 0.9 b 0.4, Snowball English stemmer, English stop words",
    )

    with tempfile.TemporaryDirectory() as tmp:
        store = DocumentStore(Path(tmp) / "documents.sqlite")
        for start in range(0, len(docs), 2048):  # the documents first (a dummy 1-d vector each), then the index alone
            chunk = docs[start : start + 2048]
            store.upsert(chunk, np.zeros((len(chunk), 1), dtype=np.float32))
        lexical = LexicalIndex(store)
        started = time.perf_counter()
        lexical.build()
        fts_build = time.perf_counter() - started
        names = {}

        def search(query: str) -> list[tuple[str, float]]:
            hits = lexical.search([query], DEPTH)[0]
            missing = [i for i, _ in hits if i not in names]
            if missing:
                names.update(store.doc_ids(missing))
            return [(names[i], s) for i, s in hits]

        run, times = _run_queries(search, dataset.queries)
        store.close()
        size = (Path(tmp) / "documents.sqlite").stat().st_size
    out["fts5"] = _summary(
        run,
        times,
        dataset.qrels,
        rel,
        fts_build,
        "SQLite FTS5 bm25() (k1 1.2, b 0.75 fixed), porter unicode61, English stop words dropped from queries",
    )
    out["fts5"]["documents_sqlite_bytes_with_index"] = size
    return out


def _summary(run, times, qrels, rel, build_s, what) -> dict:
    result = evaluate(run, qrels, MEASURES, rel_threshold=rel, complete=True)
    return {
        "what": what,
        **{m: round(result.aggregate[m], 4) for m in MEASURES},
        "build_s": round(build_s, 2),
        "query_ms_median": round(statistics.median(times), 2),
        "query_ms_p95": round(float(np.percentile(times, 95)), 2),
    }


def _markdown(report: dict) -> str:
    lines = [
        "# Lexical first stage: SQLite FTS5 vs bm25s",
        "",
        f"CPU: {report['cpu']} (shared with other jobs); load average at the end {report['load_average']}; "
        f"SQLite {report['sqlite']}; top {DEPTH} per query, one query at a time; both engines measured side by "
        "side in the same run.",
        "",
        "| dataset | engine | nDCG@10 | R@100 | MRR@10 | R@1000 | MAP | build s | query ms median | p95 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["datasets"]:
        for engine in ("fts5", "bm25s"):
            r = row[engine]
            lines.append(
                f"| {row['dataset']} ({row['documents']:,} docs, {row['queries']} q) | {engine} | "
                f"{r['nDCG@10']:.4f} | {r['R@100']:.4f} | {r['MRR@10']:.4f} | {r['R@1000']:.4f} | "
                f"{r['MAP']:.4f} | {r['build_s']:.2f} | "
                f"{r['query_ms_median']:.2f} | {r['query_ms_p95']:.2f} |"
            )
    if report["datasets"]:
        lines += ["", *(f"- {e}: {report['datasets'][0][e]['what']}" for e in ("fts5", "bm25s"))]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TWOSTAGE_DATA") or DATA_ROOT))
    args = parser.parse_args()
    rows = []
    for name in DATASETS:
        if not (args.data / name).is_dir():
            print(f"{args.data / name}: absent, skipped")
            continue
        rows.append(measure(name, args.data / name))
        print(json.dumps(rows[-1], indent=1))
    import sqlite3

    report = {
        "cpu": _cpu(),
        "sqlite": sqlite3.sqlite_version,
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": sys.version.split()[0],
        "datasets": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lexical.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "lexical.md").write_text(_markdown(report), encoding="utf-8")
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
