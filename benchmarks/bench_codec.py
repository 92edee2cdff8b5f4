"""The 2-bit token codec's k-means iterations (issue 25): msmarco-dl20 MaxSim@100 nDCG@10 with the collection's int8
tokens converted to 2bit pooled by 2.5 (the `--store-tokens` default), the codec learned with 20 k-means iterations
(before) and with 4 (ColBERTv2's default, now), three seeds each, on the same collection.

    python benchmarks/bench_codec.py            # benchmarks/results/codec.json + codec.md

The collection is msmarco-dl20 with int8 tokens (``common.build_collection``, built once into --cache); each variant
converts a copy (``TokenStore.convert``, what ``twostage tokens --convert 2bit --pool 2.5`` runs) and searches it with
plain MaxSim (no feedback, plain query tokens, no fusion), so only the codec differs between rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from common import DATA_ROOT, RESULTS, build_collection, machine, minilm_path, save_results  # noqa: I001  (first: repo importable)

from twostage.engine import Engine  # noqa: E402
from twostage.eval.datasets import load_folder  # noqa: E402
from twostage.eval.metrics import evaluate  # noqa: E402
from twostage.indexes import residual  # noqa: E402
from twostage.indexes.token_store import TokenStore  # noqa: E402
from twostage.retriever.biencoder import BiEncoder  # noqa: E402

ITERATIONS = (20, residual.KMEANS_ITERATIONS)
SEEDS = (0, 1, 2)
PLAIN = {"prf": "none", "query_tokens": "plain", "fusion": "none"}


def ndcg(path: Path, encoder: BiEncoder, data) -> float:
    with Engine.open(path, encoder=encoder, reranker="maxsim") as engine:
        results = engine.search_queries(dict(data.queries), top_k=100, candidate_depth=100, **PLAIN)
    run = {qid: result.run() for qid, result in results.items()}
    return round(evaluate(run, data.qrels, ["nDCG@10"], rel_threshold=2, complete=True).aggregate["nDCG@10"], 4)


def convert(source: Path, target: Path, iterations: int, seed: int) -> float:
    """A copy of ``source`` with its tokens converted to 2bit pooled by 2.5, the codec learned with ``iterations``."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    train = residual.ResidualCodec.train.__func__  # type: ignore[attr-defined]
    residual.ResidualCodec.train = classmethod(  # type: ignore[method-assign]
        lambda cls, sample, bits, **kw: train(cls, sample, bits, **{**kw, "niter": iterations})
    )
    try:
        store = TokenStore.open(target / "documents.sqlite")
        started = time.perf_counter()
        store.convert("2bit", seed=seed, pool=2.5)
        store.close()
        return time.perf_counter() - started
    finally:
        residual.ResidualCodec.train = classmethod(train)  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TWOSTAGE_DATA", DATA_ROOT)))
    parser.add_argument("--cache", type=Path, default=Path(__file__).resolve().parents[1] / "runs" / "bench-codec")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    folder = args.data / "msmarco-dl20"
    if not (folder / "queries.tsv").is_file():
        print(f"no {folder}: nothing measured")
        return 0
    data = load_folder(folder)
    encoder = BiEncoder(minilm_path())
    source = args.cache / "int8"
    build_collection(data, encoder, source)
    result: dict = {"machine": machine(), "int8 nDCG@10": ndcg(source, encoder, data), "rows": []}
    for iterations in ITERATIONS:
        for seed in SEEDS:
            target = args.cache / f"2bit-{iterations}-{seed}"
            seconds = convert(source, target, iterations, seed)
            row = {"iterations": iterations, "seed": seed, "nDCG@10": ndcg(target, encoder, data)}
            result["rows"].append({**row, "convert_s": round(seconds, 1)})
            print(result["rows"][-1], flush=True)
            shutil.rmtree(target, ignore_errors=True)
    save_results(args.out, "codec", result, markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [
        "# The 2-bit token codec's k-means iterations (benchmarks/bench_codec.py)",
        "",
        f"CPU: {result['machine']}. msmarco-dl20 (54 queries), dense top 100 reranked by plain MaxSim; the same int8 "
        f"collection scores {result['int8 nDCG@10']:.4f}.",
        "",
        "| k-means iterations | seed | nDCG@10 | conversion s |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['iterations']} | {r['seed']} | {r['nDCG@10']:.4f} | {r['convert_s']} |" for r in result["rows"]]
    for iterations in sorted({r["iterations"] for r in result["rows"]}, reverse=True):
        scores = [r["nDCG@10"] for r in result["rows"] if r["iterations"] == iterations]
        lines.append(f"\nMean over the seeds, {iterations} iterations: {statistics.mean(scores):.4f}.")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
