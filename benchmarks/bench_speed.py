"""CPU speed of twostage's backends against the pipeline a user would otherwise write, side by side in one run.

    python benchmarks/bench_speed.py [--quick]      # writes benchmarks/results/speed.json and speed.md

Baseline: plain ``SentenceTransformer.encode`` + ``faiss.IndexFlatIP`` + ``CrossEncoder.predict`` at their default
settings. twostage: ``BiEncoder`` / ``CrossEncoderReranker`` / ``Engine`` on each installed backend. Every timed unit
(a chunk of passages, one query's candidates, one query) runs all systems back to back in rotating order, so load
from other processes hits them alike; the ratios are what to read, not the absolute rates.

Sections: encoding (msmarco-dl20 passages), reranking (BM25 top-100 candidates), end-to-end query latency (depth
100 and 20), vector search (synthetic clustered 384-d vectors, 100k and 1M), quality (nDCG@10 / MRR@10 on
msmarco-dl20 for every backend). The cross-encoder is all-MiniLM-L6-v2 with a fresh, seeded single-logit head: the
same architecture and cost as cross-encoder/ms-marco-MiniLM-L6-v2 (not available offline), so its speed is
representative but its scores are meaningless; rerank *quality* per backend is measured with the offline default
reranker, MaxSim over the bi-encoder, which runs on the bi-encoder's backend.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np  # noqa: E402
from common import (  # noqa: E402  (first: repo importable, hub off)
    RESULTS,
    benchmark_cross_encoder,
    minilm_path,
    read_data,
)
from common import SPEED_DATA as DATA  # noqa: E402

TARGETS = {"encode": 3.0, "rerank": 2.5, "latency100": 0.4, "ndcg_delta": 0.01}
#: issue 13: the auto choice against the baseline, per stage
AUTO_TARGETS = {"encoding": 4.0, "reranking": 3.0}
FULL = {"docs": 1000, "rerank_queries": 8, "e2e_queries": 12, "quality_queries": None, "sizes": (100_000, 1_000_000)}
QUICK = {"docs": 200, "rerank_queries": 3, "e2e_queries": 6, "quality_queries": 12, "sizes": (100_000,)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- set-up
def rotate(names: Sequence[str], i: int) -> list[str]:
    return list(names[i % len(names) :]) + list(names[: i % len(names)])


# --------------------------------------------------------------------------- sections
def bench_encoding(st: Any, encoders: dict[str, Any], texts: list[str], chunks: int) -> dict:
    """docs/s and tokens/s for baseline ST.encode and each backend's BiEncoder.encode_documents, interleaved."""
    names = ["baseline", *encoders]
    run = {"baseline": lambda t: st.encode(t)}
    run.update({b: (lambda t, e=enc: e.encode_documents(t).embeddings) for b, enc in encoders.items()})
    warm = ["a short warm-up text", "another, somewhat longer warm-up passage about nothing in particular " * 4]
    for name in names:
        run[name](warm)
    limit = st.max_seq_length
    lengths = [len(ids) for ids in st.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    tokens = sum(min(n, limit) for n in lengths)
    size = -(-len(texts) // chunks)
    seconds = dict.fromkeys(names, 0.0)
    vectors: dict[str, list] = {name: [] for name in names}
    for i in range(chunks):
        part = texts[i * size : (i + 1) * size]
        for name in rotate(names, i):
            started = time.perf_counter()
            vectors[name].append(np.asarray(run[name](part), dtype=np.float32))
            seconds[name] += time.perf_counter() - started
        log(f"  encoding chunk {i + 1}/{chunks}: " + ", ".join(f"{n} {seconds[n]:.1f}s" for n in names))
    tokenize_s = _tokenize_seconds(st.tokenizer, texts, limit)
    out = {
        "documents": len(texts),
        "tokens": tokens,
        "truncated": sum(n > limit for n in lengths),
        "max_seq_length": limit,
        "tokenize_seconds": tokenize_s,
        "systems": {},
    }
    for name in names:
        out["systems"][name] = {
            "seconds": seconds[name],
            "docs_per_s": len(texts) / seconds[name],
            "tokens_per_s": tokens / seconds[name],
            "speedup": seconds["baseline"] / seconds[name],
        }
    out["embeddings"] = {name: np.concatenate(v) for name, v in vectors.items()}
    return out


def _tokenize_seconds(tokenizer: Any, texts: list[str], limit: int, batch: int = 32) -> float:
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=limit)
    return time.perf_counter() - started


def bench_reranking(ce: Any, rerankers: dict[str, Any], data: dict, qids: list[str]) -> dict:
    """pairs/s: baseline CrossEncoder.predict vs CrossEncoderReranker.score on each backend, one query at a time."""
    names = ["baseline", *rerankers]
    run: dict[str, Callable] = {"baseline": lambda q, docs: ce.predict([(q, d) for d in docs])}
    run.update({b: (lambda q, docs, r=r: r.score(q, docs)) for b, r in rerankers.items()})
    for name in names:
        run[name]("warm-up query", ["a warm-up passage", "another warm-up passage that is a little longer"])
    before = {b: r.truncated for b, r in rerankers.items()}
    seconds = dict.fromkeys(names, 0.0)
    pairs = 0
    for i, qid in enumerate(qids):
        query, docs = data["queries"][qid], [data["passages"][d] for d in data["top"][qid]]
        pairs += len(docs)
        for name in rotate(names, i):
            started = time.perf_counter()
            run[name](query, docs)
            seconds[name] += time.perf_counter() - started
        log(f"  rerank query {i + 1}/{len(qids)}: " + ", ".join(f"{n} {seconds[n]:.1f}s" for n in names))
    out = {"queries": len(qids), "pairs": pairs, "max_length": next(iter(rerankers.values())).max_length, "systems": {}}
    for name in names:
        out["systems"][name] = {
            "seconds": seconds[name],
            "pairs_per_s": pairs / seconds[name],
            "speedup": seconds["baseline"] / seconds[name],
            "truncated": rerankers[name].truncated - before[name] if name in rerankers else None,
        }
    return out


def bench_latency(
    st: Any,
    ce: Any,
    engines: dict[str, Any],
    texts: list[str],
    baseline_vectors: np.ndarray,
    queries: list[str],
    depths: Sequence[int],
) -> dict:
    """Per-query wall time of the whole pipeline (encode, search, rerank, sort) at each depth, interleaved."""
    import faiss

    index = faiss.IndexFlatIP(baseline_vectors.shape[1])
    index.add(baseline_vectors)

    def baseline(query: str, depth: int) -> list[int]:
        vector = st.encode([query])
        _, ids = index.search(np.asarray(vector, dtype=np.float32), depth)
        candidates = [int(i) for i in ids[0] if i >= 0]
        scores = ce.predict([(query, texts[i]) for i in candidates])
        return [candidates[i] for i in np.argsort(-np.asarray(scores))[:10]]

    run: dict[str, Callable] = {"baseline": baseline}
    run.update({b: (lambda q, k, e=e: e.search(q, k=k, top_n=10)) for b, e in engines.items()})
    names = list(run)
    for name in names:
        run[name]("warm-up query", 5)
    out: dict[str, Any] = {"queries": len(queries), "collection": len(texts), "depths": {}}
    for depth in depths:
        times: dict[str, list[float]] = {name: [] for name in names}
        for i, query in enumerate(queries):
            for name in rotate(names, i):
                started = time.perf_counter()
                run[name](query, depth)
                times[name].append(time.perf_counter() - started)
        log(f"  latency depth {depth}: " + ", ".join(f"{n} {statistics.median(times[n]) * 1000:.0f}ms" for n in names))
        base = statistics.median(times["baseline"])
        out["depths"][str(depth)] = {
            name: {
                "median_ms": statistics.median(t) * 1000,
                "p95_ms": float(np.percentile(t, 95)) * 1000,
                "ratio": statistics.median(t) / base,
            }
            for name, t in times.items()
        }
    return out


def synthetic_vectors(n: int, dim: int, seed: int, centers: int = 4096) -> np.ndarray:
    """Unit vectors around random cluster centres (cosine to the centre ~0.7): embedding-like, unlike plain noise."""
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(12345).standard_normal((centers, dim)).astype(np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        noise = rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        block = middle[rng.integers(0, centers, m)] + noise
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def search_variants(index: Any, exact: Callable) -> list[tuple[str, Any, dict]]:
    """(label suffix, exact-vector lookup or None, search-effort overrides) to time on ``index``: its defaults as a
    collection searches it, plus 4x the effort (the --ef-search / --nprobe trade-off), plus a lossy index's codes alone."""
    from twostage.indexes.vector_index import REFINE_FACTOR

    if index.is_lossy and index.is_trained:  # untrained, it still searches its exact buffer
        rescore = f" + exact re-score of {REFINE_FACTOR}k from SQLite"
        return [
            (" codes only", None, {}),
            (rescore, exact, {}),
            (f"{rescore}, 4x nprobe", exact, {"nprobe": 4 * index.nprobe}),
        ]
    if "HNSW" in index.factory:
        return [("", None, {}), (", 4x efSearch", None, {"ef_search": 4 * index.ef_search})]
    return [("", None, {})]


def bench_vectors(sizes: Sequence[int], n_queries: int, kinds: Sequence[str]) -> dict:
    """Build time, queries/s (one batched search, k=10), recall@10 against exact search, bytes per vector on disk.

    The vectors also go into a real SQLite document store, as in a collection: lossy indexes (IVF-PQ) are measured
    both on their codes alone and as a collection searches them, re-scoring REFINE_FACTOR x k candidates exactly
    with the vectors read back from that store."""
    import faiss

    from twostage.indexes.document_store import DocumentStore
    from twostage.indexes.documents import Document
    from twostage.indexes.vector_index import REFINE_FACTOR, VectorIndex

    dim = 384
    queries = synthetic_vectors(n_queries, dim, seed=7)
    out: dict[str, Any] = {
        "dimension": dim,
        "queries": n_queries,
        "threads": faiss.omp_get_max_threads(),
        "refine_factor": REFINE_FACTOR,
        "sizes": {},
    }
    for n in sizes:
        started = time.perf_counter()
        vectors = synthetic_vectors(n, dim, seed=1)
        log(f"  {n:,} vectors generated in {time.perf_counter() - started:.0f}s")
        exact = faiss.IndexFlatIP(dim)
        exact.add(vectors)
        started = time.perf_counter()
        _, truth = exact.search(queries, 10)
        exact_s = time.perf_counter() - started
        del exact
        store_dir = tempfile.mkdtemp(prefix="bench-store-")
        store = DocumentStore(Path(store_dir) / "documents.sqlite")
        started = time.perf_counter()
        internal = np.concatenate(
            [
                store.upsert(
                    [Document(str(i), "") for i in range(a, min(n, a + 100_000))], vectors[a : a + 100_000]
                ).new_ids
                for a in range(0, n, 100_000)
            ]
        )
        log(f"  {n:,} vectors stored in SQLite in {time.perf_counter() - started:.0f}s")
        truth = internal[truth]
        rows: dict[str, Any] = {
            "baseline IndexFlatIP": {"qps": n_queries / exact_s, "recall@10": 1.0, "bytes_per_vector": 4 * dim}
        }
        for kind in kinds:
            index = VectorIndex.create(dim, kind, expected_size=n)
            started = time.perf_counter()
            for a in range(0, n, 100_000):
                index.add(internal[a : a + 100_000], vectors[a : a + 100_000])
            build_s = time.perf_counter() - started
            with tempfile.TemporaryDirectory() as tmp:
                index.save(Path(tmp) / "vectors.faiss")
                size = sum(p.stat().st_size for p in Path(tmp).iterdir())
            for suffix, rescore, effort in search_variants(index, store.embeddings):
                index.search(queries[:10], 10, exact=rescore, **effort)
                started = time.perf_counter()
                _, ids = index.search(queries, 10, exact=rescore, **effort)
                search_s = time.perf_counter() - started
                recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]))
                settings = (
                    {"efSearch": effort.get("ef_search", index.ef_search)}
                    if kind == "hnsw"
                    else {"nprobe": effort.get("nprobe", index.nprobe)}
                    if kind == "ivfpq"
                    else {}
                )
                rows[f"twostage {kind} ({index.factory}){suffix}"] = {
                    "build_s": build_s,
                    "qps": n_queries / search_s,
                    "recall@10": recall,
                    "bytes_per_vector": size / n,
                    "settings": settings,
                }
                log(
                    f"  {n:,} {kind}{suffix}: build {build_s:.0f}s, {n_queries / search_s:.0f} q/s, recall@10 {recall:.3f}"
                )
            del index
            gc.collect()
        out["sizes"][str(n)] = rows
        store.close()
        shutil.rmtree(store_dir, ignore_errors=True)
        del vectors
        gc.collect()
    return out


def bench_quality(encoders: dict[str, Any], data: dict, qids: list[str]) -> dict:
    """nDCG@10 / MRR@10 (label >= 2) of BM25 top-100 rescored by the bi-encoder and by MaxSim, per backend."""
    from twostage.eval.metrics import evaluate
    from twostage.reranker.base import Candidate
    from twostage.reranker.maxsim import MaxSimReranker, encode_with_tokens, mapping_lookup

    qrels = {q: data["qrels"][q] for q in qids}
    doc_ids = sorted({d for q in qids for d in data["top"][q]})
    texts = [data["passages"][d] for d in doc_ids]
    bm25 = {q: {d: float(100 - r) for r, d in enumerate(data["top"][q])} for q in qids}
    measures = ["nDCG@10", "MRR@10"]
    out: dict[str, Any] = {"queries": len(qids), "passages": len(doc_ids), "systems": {}}
    out["systems"]["BM25 (input run)"] = evaluate(bm25, qrels, measures, rel_threshold=2).aggregate
    for backend, encoder in encoders.items():
        started = time.perf_counter()
        dense, tokens = encode_with_tokens(encoder, texts)
        row = dict(zip(doc_ids, range(len(doc_ids))))
        queries = [data["queries"][q] for q in qids]
        qvec = encoder.encode_queries(queries)
        store = dict(zip(doc_ids, tokens))
        maxsim = MaxSimReranker(encoder, token_store=mapping_lookup(store))
        dense_run, maxsim_run = {}, {}
        for qid, query, vector in zip(qids, queries, qvec):
            cands = data["top"][qid]
            scores = dense[[row[d] for d in cands]] @ vector
            dense_run[qid] = {d: float(s) for d, s in zip(cands, scores)}
            ranked = maxsim.rerank(query, [Candidate(d, data["passages"][d]) for d in cands])
            maxsim_run[qid] = {r.doc_id: r.score for r in ranked}
        out["systems"][backend] = {
            "bi-encoder": evaluate(dense_run, qrels, measures, rel_threshold=2).aggregate,
            "maxsim": evaluate(maxsim_run, qrels, measures, rel_threshold=2).aggregate,
            "seconds": time.perf_counter() - started,
        }
        log(
            f"  quality {backend}: {out['systems'][backend]['bi-encoder']} / maxsim {out['systems'][backend]['maxsim']}"
        )
    return out


def profile(encoder: Any, reranker: Any, texts: list[str], data: dict, qids: list[str], rounds: int = 3) -> dict:
    """Where the default backend's time goes: the whole call, tokenisation alone, the model alone (pre-padded batches).

    Tokenisation overlaps the model on a pipelined runtime, so the parts can add up to more than the whole."""
    from twostage.runtime import encode as runtime_encode
    from twostage.runtime.backends import physical_cores

    tokenizer, limit = encoder.model.tokenizer, encoder.max_seq_length
    ids, _ = runtime_encode.token_ids(tokenizer, texts, limit)
    order = np.argsort([-len(i) for i in ids], kind="stable")
    cores = physical_cores()
    doc_batches = [
        runtime_encode.pad(ids, rows, tokenizer.pad_token_id or 0)
        for rows in np.array_split(order, runtime_encode.batch_count(len(ids), encoder.batch_size, cores))
    ]
    queries = [data["queries"][q] for q in qids]
    candidates = [[data["passages"][d] for d in data["top"][q]] for q in qids]
    pair_q = [q for q, docs in zip(queries, candidates) for _ in docs]
    pair_t = [t for docs in candidates for t in docs]
    features, _ = reranker._tokenize(pair_q, pair_t)
    porder = np.argsort([-len(i) for i in features["input_ids"]], kind="stable")
    pair_batches = [
        reranker._pad(features, rows)
        for rows in np.array_split(porder, runtime_encode.batch_count(len(porder), reranker.batch_size, cores))
    ]
    saved_cache, encoder.cache = encoder.cache, None
    parts = {
        "encode: whole encode_documents": lambda: encoder.encode_documents(texts),
        "encode: tokenisation": lambda: runtime_encode.token_ids(tokenizer, texts, limit),
        "encode: model (runtime.map)": lambda: encoder.runtime.map(doc_batches),
        "rerank: whole score_batch": lambda: reranker.score_batch(queries, candidates),
        "rerank: tokenisation": lambda: reranker._tokenize(pair_q, pair_t),
        "rerank: model (runtime.map)": lambda: reranker.runtime.map(pair_batches),
    }
    seconds = dict.fromkeys(parts, 0.0)
    try:
        for i in range(rounds):
            for name in rotate(list(parts), i):
                started = time.perf_counter()
                parts[name]()
                seconds[name] += time.perf_counter() - started
    finally:
        encoder.cache = saved_cache
    whole = {"encode": seconds["encode: whole encode_documents"], "rerank": seconds["rerank: whole score_batch"]}
    return {
        "documents": len(texts),
        "pairs": len(pair_t),
        "parts": {name: {"seconds": s / rounds, "share": s / whole[name.split(":")[0]]} for name, s in seconds.items()},
    }


# --------------------------------------------------------------------------- report
def auto_choices(model: str, ce_dir: Path) -> dict:
    """What ``--backend auto`` picks here per stage, with the backends that passed its quality gate."""
    from twostage.reranker.backend_choice import cross_encoder_choice
    from twostage.retriever.backend_choice import bi_encoder_choice

    found = {"bi-encoder": bi_encoder_choice(model), "cross-encoder": cross_encoder_choice(str(ce_dir))}
    return {
        stage: {
            "choice": c.choice,
            "passed": [m.backend for m in c.measurements if m.passed],
            "measured_at": c.measured_at,
            "measure_seconds": c.measure_seconds,
            "load_seconds": c.load_seconds,
        }
        for stage, c in found.items()
        if c is not None
    }


def auto_lines(report: dict) -> list[str]:
    """One line per stage: its auto choice, its speed-up in this run against the fastest gate-passing backend and the
    baseline, and issue 13's targets for both (within 5% of the fastest; >= 4x encoding, >= 3x reranking)."""
    lines = []
    for stage, section, unit in (("bi-encoder", "encoding", "encoding"), ("cross-encoder", "reranking", "reranking")):
        auto, systems = report.get("auto", {}).get(stage), report.get(section, {}).get("systems", {})
        if not auto or auto["choice"] not in systems:
            continue
        eligible = {b: systems[b]["speedup"] for b in auto["passed"] if b in systems}
        best = max(eligible, key=eligible.get)
        share, speedup = systems[auto["choice"]]["speedup"] / eligible[best], systems[auto["choice"]]["speedup"]
        target = AUTO_TARGETS[section]
        lines.append(
            f"- {stage}: auto chose **{auto['choice']}** (calibrated {auto['measured_at']}, "
            f"{auto['measure_seconds']:.1f} s measuring); in this run's {unit} it is {share:.2f}x the "
            f"fastest backend that passed the gate ({best}, {eligible[best]:.2f}x the baseline). Passed: "
            f"{', '.join(auto['passed'])}. Issue 13: within 5% of the fastest {_met(share >= 0.95)}; "
            f"{speedup:.2f}x the baseline against >= {target:g}x {_met(speedup >= target)}."
        )
    return lines + [""] if lines else []


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from twostage.runtime.backends import physical_cores

    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    cpu = platform.processor()
    try:
        cpu = next(
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in ("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino", "nncf", "faiss-cpu"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "physical_cores": physical_cores(),
        "isa": [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f" {f}" in flags],
        "python": platform.python_version(),
        "versions": versions,
        "load_average_start": os.getloadavg(),
    }


def targets(report: dict, default: str) -> list[dict]:
    """The issue's targets, checked for the default backend (what users get) and for the best backend."""
    rows = []
    enc = report.get("encoding", {}).get("systems", {})
    rer = report.get("reranking", {}).get("systems", {})
    lat = report.get("latency", {}).get("depths", {}).get("100", {})
    qual = report.get("quality", {}).get("systems", {})
    for backend in [b for b in dict.fromkeys([default, *enc]) if b != "baseline"]:
        ref = qual.get("torch", {}).get("maxsim", {}).get("nDCG@10")
        mine = qual.get(backend, {}).get("maxsim", {}).get("nDCG@10")
        delta = None if ref is None or mine is None else mine - ref
        dense_delta = None
        if "torch" in qual and backend in qual:
            dense_delta = qual[backend]["bi-encoder"]["nDCG@10"] - qual["torch"]["bi-encoder"]["nDCG@10"]
        rows.append(
            {
                "backend": backend,
                "default": backend == default,
                "encode_speedup": enc.get(backend, {}).get("speedup"),
                "rerank_speedup": rer.get(backend, {}).get("speedup"),
                "latency100_ratio": lat.get(backend, {}).get("ratio"),
                "ndcg_delta_maxsim": delta,
                "ndcg_delta_dense": dense_delta,
            }
        )
    for row in rows:
        checks = [
            row["encode_speedup"] is not None and row["encode_speedup"] >= TARGETS["encode"],
            row["rerank_speedup"] is not None and row["rerank_speedup"] >= TARGETS["rerank"],
            row["latency100_ratio"] is not None and row["latency100_ratio"] <= TARGETS["latency100"],
            all(
                d is not None and abs(d) <= TARGETS["ndcg_delta"]
                for d in (row["ndcg_delta_maxsim"], row["ndcg_delta_dense"])
            ),
        ]
        row["met"] = checks
    return rows


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# twostage speed benchmark",
        "",
        f"`python benchmarks/bench_speed.py{' --quick' if report['quick'] else ''}` on {env['cpu']}, "
        f"{env['physical_cores']} cores ({', '.join(env['isa'])}); load average {fmt(env['load_average_start'][0])} "
        f"at start, {fmt(report['load_average_end'][0])} at end; {report['seconds'] / 60:.1f} min. "
        f"Preference order's first installed backend: **{report['default_backend']}** (the auto choice is below). "
        "Ratios are against the baseline measured interleaved in the "
        "same run (plain `SentenceTransformer.encode` + `faiss.IndexFlatIP` + `CrossEncoder.predict`, defaults).",
        "",
    ]
    runs: dict[str, list[str]] = {}
    for section, run in report.get("carried_over", {}).items():
        runs.setdefault(json.dumps(run, sort_keys=True), []).append(section)
    for run_key, sections in runs.items():
        run = json.loads(run_key)
        lines += [
            f"Sections {', '.join(sections)} are carried over from the run of {run['date']} (load average "
            f"{fmt(run['load_average'][0])} at start, {fmt(run['load_average'][1])} at end, {run['minutes']} min); "
            "this run measured the others.",
            "",
        ]
    tags = report.get("backend_tags", {})
    auto = {stage: a["choice"] for stage, a in report.get("auto", {}).items()}
    bi_auto, ce_auto = auto.get("bi-encoder"), auto.get("cross-encoder")
    if auto:
        lines += ["## The auto choice (`--backend auto`, marked *auto* in the tables)", "", *auto_lines(report)]
    if "encoding" in report:
        e = report["encoding"]
        lines += [
            f"## Encoding ({e['documents']} msmarco-dl20 passages, {e['tokens']:,} tokens, {e['truncated']} truncated "
            f"at {e['max_seq_length']})",
            "",
            "| system | docs/s | tokens/s | speed-up |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, s in e["systems"].items():
            lines.append(
                f"| {_label(name, tags, bi_auto)} | {fmt(s['docs_per_s'], 1)} | {fmt(s['tokens_per_s'], 0)} | "
                f"{fmt(s['speedup'])}x |"
            )
        lines += ["", f"Tokenising all {e['documents']} passages alone takes {fmt(e['tokenize_seconds'])} s.", ""]
    if "reranking" in report:
        r = report["reranking"]
        lines += [
            f"## Reranking ({r['queries']} queries x BM25 top-100 = {r['pairs']} pairs, max length {r['max_length']})",
            "",
            "| system | pairs/s | speed-up | pairs truncated |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, s in r["systems"].items():
            lines.append(
                f"| {_label(name, tags, ce_auto)} | {fmt(s['pairs_per_s'], 1)} | {fmt(s['speedup'])}x | "
                f"{fmt(s['truncated'])} |"
            )
        lines.append("")
    if "profile" in report:
        p = report["profile"]
        lines += [
            f"## Profile of the default backend ({p['documents']} passages; {p['pairs']} pairs)",
            "",
            "| part | seconds | share of the whole call |",
            "| --- | ---: | ---: |",
        ]
        for name, s in p["parts"].items():
            lines.append(f"| {name} | {fmt(s['seconds'])} | {fmt(100 * s['share'], 0)}% |")
        lines += [
            "",
            "Tokenisation runs while earlier batches are in the model (pipelined), so parts may add up to "
            "more than 100%; whatever is left is padding, pooling and Python.",
            "",
        ]
    if "latency" in report:
        lat = report["latency"]
        depths = list(lat["depths"])
        lines += [
            f"## End-to-end query latency ({lat['queries']} queries, {lat['collection']} passages, top 10 of depth k)",
            "",
            "| system | " + " | ".join(f"k={d} median ms | k={d} p95 ms | k={d} ratio" for d in depths) + " |",
            "| --- |" + " ---: | ---: | ---: |" * len(depths),
        ]
        for name in lat["depths"][depths[0]]:
            cells = []
            for d in depths:
                s = lat["depths"][d][name]
                cells += [fmt(s["median_ms"], 0), fmt(s["p95_ms"], 0), fmt(s["ratio"]) + "x"]
            lines.append(f"| {_label(name, tags)} | " + " | ".join(cells) + " |")
        lines.append("")
    if "vectors" in report:
        v = report["vectors"]
        lines += [
            f"## Vector search (synthetic clustered {v['dimension']}-d unit vectors, {v['queries']} queries, k=10, "
            f"{v['threads']} threads)",
            "",
            "| vectors | index | build s | queries/s | recall@10 | bytes/vector |",
            "| ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for n, rows in v["sizes"].items():
            for name, s in rows.items():
                extra = ", ".join(f"{k} {val}" for k, val in s.get("settings", {}).items())
                label = f"{name}{' (' + extra + ')' if extra else ''}"
                lines.append(
                    f"| {int(n):,} | {label} | {fmt(s.get('build_s'), 0)} | {fmt(s['qps'], 0)} | "
                    f"{fmt(s['recall@10'], 3)} | {fmt(s['bytes_per_vector'], 0)} |"
                )
        lines += [
            "",
            "bytes/vector is the index file alone; every collection also keeps each float32 vector in SQLite "
            f"({4 * v['dimension']:,} bytes), which is what the exact re-score of IVF-PQ's top {v.get('refine_factor', 4)}k "
            "candidates reads (a collection always searches a lossy index that way). The synthetic points of a cluster "
            "are nearly equidistant from each other, a harder case for approximate search than real embeddings.",
            "",
        ]
    if "quality" in report:
        q = report["quality"]
        lines += [
            f"## Quality (msmarco-dl20, {q['queries']} queries, BM25 top-100 rescored; {q['passages']} passages; "
            "MRR counts label >= 2)",
            "",
            "| backend | bi-encoder nDCG@10 | bi-encoder MRR@10 | MaxSim nDCG@10 | MaxSim MRR@10 |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, s in q["systems"].items():
            if "bi-encoder" in s:
                lines.append(
                    f"| {_label(name, tags, bi_auto)} | {fmt(s['bi-encoder']['nDCG@10'], 4)} | {fmt(s['bi-encoder']['MRR@10'], 4)} | "
                    f"{fmt(s['maxsim']['nDCG@10'], 4)} | {fmt(s['maxsim']['MRR@10'], 4)} |"
                )
            else:
                lines.append(f"| {name} | {fmt(s['nDCG@10'], 4)} | {fmt(s['MRR@10'], 4)} | | |")
        lines += [
            "",
            "The baseline computes exactly what the torch backend computes (same model, same arithmetic).",
            "",
        ]
    if report.get("targets"):
        lines += [
            "## Targets (ratios against the baseline, same run)",
            "",
            f"| backend | encoding >= {TARGETS['encode']}x | reranking >= {TARGETS['rerank']}x | latency k=100 <= "
            f"{TARGETS['latency100']}x | nDCG@10 within {TARGETS['ndcg_delta']} of torch (bi-encoder / MaxSim) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in report["targets"]:
            ok = [_met(m) for m in row["met"]]
            nd = f"{fmt(row['ndcg_delta_dense'], 4)} / {fmt(row['ndcg_delta_maxsim'], 4)}"
            name = row["backend"] + ((" (auto)" if auto else " (default)") if row["default"] else "")
            lines.append(
                f"| {name} | {fmt(row['encode_speedup'])}x {ok[0]} | {fmt(row['rerank_speedup'])}x {ok[1]} | "
                f"{fmt(row['latency100_ratio'])}x {ok[2]} | {nd} {ok[3]} |"
            )
        lines.append("")
    if report.get("cross_encoder"):
        note = (
            f"Notes: the cross-encoder is `{report['cross_encoder']}` (`--cross-encoder`), a trained one of "
            "ms-marco-MiniLM-L6-v2's architecture and cost; rerank quality per backend is measured with MaxSim over "
            "the bi-encoder (which runs on the bi-encoder's backend), the cross-encoder's by auto's quality gate."
        )
    else:
        note = (
            "Notes: the cross-encoder is all-MiniLM-L6-v2 with a fresh seeded single-logit head (the architecture and "
            "cost of cross-encoder/ms-marco-MiniLM-L6-v2, which is not available offline): its speed is "
            "representative, its scores are meaningless, so rerank quality per backend is measured with MaxSim over "
            "the bi-encoder (which runs on the bi-encoder's backend). "
        )
    lines += [note, ""]
    return "\n".join(lines)


def _label(name: str, tags: dict, auto: str | None = None) -> str:
    """A system's row label; ``auto`` names the stage's auto choice, marked *auto*."""
    if name == "baseline":
        return "baseline (sentence-transformers + FAISS)"
    return f"twostage {tags.get(name, name)}" + (" *auto*" if name == auto else "")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


# --------------------------------------------------------------------------- main
SECTION_KEYS = ("encoding", "reranking", "profile", "latency", "quality", "vectors")


def carry_over(report: dict, previous_path: Path) -> None:
    """Sections this run skipped (``--sections``) are copied from the previous report, each with the run it was
    measured in (date, load, duration): a section's ratios were measured side by side within its own run."""
    if not previous_path.is_file():
        return
    previous = json.loads(previous_path.read_text(encoding="utf-8"))
    env = previous.get("environment", {})
    previous_run = {
        "date": env.get("date", "an earlier run"),
        "load_average": [env.get("load_average_start", [None])[0], (previous.get("load_average_end") or [None])[0]],
        "minutes": round(previous.get("seconds", 0) / 60, 1),
    }
    origins = previous.get("carried_over", {})
    carried = {}
    for key in SECTION_KEYS:
        if key not in report and key in previous:
            report[key] = previous[key]
            carried[key] = origins.get(key, previous_run)
    if carried:
        report["carried_over"] = carried


def main(argv: Sequence[str] | None = None) -> int:
    from twostage.runtime.backends import BACKENDS, default_backend, missing_dependencies

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes, for a smoke test")
    parser.add_argument("--backends", default=None, help="comma-separated backends (default: every installed one)")
    parser.add_argument("--sections", default="encode,rerank,profile,latency,quality,vectors")
    parser.add_argument("--sizes", default=None, help="comma-separated vector counts (default 100000,1000000)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--cross-encoder",
        type=Path,
        default=None,
        metavar="DIR",
        help="a trained cross-encoder to rerank with (default: all-MiniLM-L6-v2 with a fresh head, "
        "whose scores mean nothing, so int8 backends may fail auto's quality gate)",
    )
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} is not present (evaluation data lives beside the repo in ../shared/data); nothing to do")
        return 0
    plan = QUICK if args.quick else FULL
    sections = set(args.sections.split(","))
    requested = args.backends.split(",") if args.backends else list(BACKENDS)
    backends = [b for b in requested if not missing_dependencies(b)]
    skipped = {b: missing_dependencies(b) for b in requested if b not in backends}
    started_all = time.perf_counter()
    report: dict[str, Any] = {
        "quick": args.quick,
        "environment": environment(),
        "default_backend": default_backend(),
        "backends": backends,
        "skipped_backends": skipped,
    }
    log(f"backends {backends} (default {report['default_backend']}); skipped {skipped or 'none'}")

    from sentence_transformers import CrossEncoder, SentenceTransformer

    from twostage.engine import Engine
    from twostage.reranker.cross_encoder import CrossEncoderReranker
    from twostage.retriever.biencoder import BiEncoder
    from twostage.retriever.cache import EmbeddingCache
    from twostage.runtime.backends import configure_threads
    from twostage.runtime.config import cache_root

    configure_threads()
    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    ce_dir = args.cross_encoder or benchmark_cross_encoder(cache_root() / "bench" / "minilm-cross-encoder")
    report["cross_encoder"] = str(args.cross_encoder) if args.cross_encoder else None
    data = read_data(plan["quality_queries"])
    texts = list(data["passages"].values())[: plan["docs"]]
    log("loading models (exports are built on first use and cached)")
    st = SentenceTransformer(minilm_path(), device="cpu", local_files_only=True)
    ce = CrossEncoder(str(ce_dir), device="cpu", local_files_only=True)
    cache = EmbeddingCache(work / "embeddings.sqlite")
    encoders, rerankers = {}, {}
    for b in backends:
        started = time.perf_counter()
        encoders[b] = BiEncoder(minilm_path(), backend=b, cache=cache)
        rerankers[b] = CrossEncoderReranker(str(ce_dir), backend=b)
        log(f"  {b}: {encoders[b].backend_tag} ready in {time.perf_counter() - started:.1f}s")
    report["backend_tags"] = {b: e.backend_tag for b, e in encoders.items()}
    log("the auto choice per stage (runtime.autotune: measured now unless cached for this machine and model)")
    report["auto"] = auto_choices(minilm_path(), ce_dir)
    log("  auto: " + ", ".join(f"{stage} {a['choice']}" for stage, a in report["auto"].items()))

    if "encode" in sections:
        log(f"encoding {len(texts)} passages")
        report["encoding"] = bench_encoding(st, encoders, texts, chunks=5)
    if "rerank" in sections:
        qids = data["qids"][: plan["rerank_queries"]]
        log(f"reranking {len(qids)} queries x 100 candidates")
        report["reranking"] = bench_reranking(ce, rerankers, data, qids)
    if "profile" in sections and report["default_backend"] in encoders:
        b = report["default_backend"]
        log(f"profile of the {b} backend")
        report["profile"] = profile(encoders[b], rerankers[b], texts[:200], data, data["qids"][:2])
    if "latency" in sections:
        log("end-to-end latency")
        baseline_vectors = (
            report.get("encoding", {}).get("embeddings", {}).get("baseline") if "encoding" in report else None
        )
        if baseline_vectors is None:
            baseline_vectors = np.asarray(st.encode(texts), dtype=np.float32)
        engines = {}
        docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
        for b in backends:  # vectors come from the embedding cache the encoding section filled
            engines[b] = Engine.create(
                work / f"collection-{b}", encoder=encoders[b], reranker=rerankers[b], index_type="flat", backend=b
            )
            engines[b].add(docs)
        queries = [data["queries"][q] for q in data["qids"][-plan["e2e_queries"] :]]
        report["latency"] = bench_latency(st, ce, engines, texts, baseline_vectors, queries, depths=(100, 20))
        for engine in engines.values():
            engine.close()
    if "quality" in sections:
        log(f"quality on {len(data['qids'])} queries")
        report["quality"] = bench_quality(encoders, data, data["qids"])
    del encoders, rerankers, st, ce
    gc.collect()
    if "vectors" in sections:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(plan["sizes"])
        log(f"vector search at {sizes}")
        report["vectors"] = bench_vectors(sizes, n_queries=1000, kinds=("flat", "hnsw", "ivfpq"))

    carry_over(report, args.out / "speed.json")
    auto_encoder = report.get("auto", {}).get("bi-encoder", {}).get("choice")
    report["targets"] = targets(report, auto_encoder or report["default_backend"])
    report["seconds"] = time.perf_counter() - started_all
    report["load_average_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(_jsonable(report), indent=2), encoding="utf-8")
    text = markdown(report)
    (args.out / "speed.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
