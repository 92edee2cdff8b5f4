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
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # noqa: E402
from common import THRESHOLDS, cacm_split, levers_arguments, machine, minilm_path  # noqa: E402  (first: repo importable, hub off)

from twostage.engine import Engine  # noqa: E402
from twostage.eval.datasets import load_folder  # noqa: E402
from twostage.eval.metrics import evaluate  # noqa: E402
from twostage.eval.significance import compare  # noqa: E402
from twostage.indexes.documents import Document  # noqa: E402

K = 100
SIDES = ("plain", "special")  # content tokens only, or [CLS]/[SEP] kept too
VARIANTS = list(itertools.product(SIDES, SIDES))  # (query side, passage side)
BASELINE = ("plain", "plain")


def token_sets(model, texts: list[str], prompt: str | None = None) -> dict[str, list[np.ndarray]]:
    """Per text, unit-length token vectors from one forward pass: "plain" without special tokens, "special" with."""
    special_ids = np.asarray(model.tokenizer.all_special_ids)
    out = {"plain": [], "special": []}
    for start in range(0, len(texts), 64):
        outputs = model.encode(
            texts[start : start + 64], output_value=None, batch_size=32, show_progress_bar=False, prompt=prompt
        )
        for o in outputs:
            attended = o["attention_mask"].bool().cpu().numpy()
            ids = o["input_ids"].cpu().numpy()
            vectors = o["token_embeddings"].float().cpu().numpy()
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            content = attended & ~np.isin(ids, special_ids)
            out["plain"].append(vectors[content if content.any() else attended].astype(np.float16).astype(np.float32))
            out["special"].append(vectors[attended].astype(np.float16).astype(np.float32))
    return out


def maxsim(query: np.ndarray, passage: np.ndarray) -> float:
    return float((query @ passage.T).max(axis=1).sum())


@dataclass
class Candidates:
    """A dataset's dense top ``K`` per query, with every candidate's and query's token sets (:func:`token_sets`)."""

    per_query: dict[str, list[str]]
    passages: dict[str, dict[str, np.ndarray]]  # token-set name -> doc id -> vectors
    queries: dict[str, dict[str, np.ndarray]]  # token-set name -> qid -> vectors
    qrels: dict


def dense_candidates(name: str, data: Path, cache: Path, model) -> Candidates:
    """``name``'s dense top ``K`` from bench_levers' collection in ``cache``, encoded with ``model`` (torch)."""
    dataset = load_folder(data / name)
    with Engine.open(cache / name, reranker=None) as engine:
        results = engine.search_queries(dict(dataset.queries), k=K, top_n=K, rerank=False)
    candidates = {qid: [h.doc_id for h in r.hits] for qid, r in results.items()}
    doc_ids = sorted({d for ids in candidates.values() for d in ids})
    wanted, texts = set(doc_ids), {}
    for row in dataset.iter_corpus():  # the text a collection encodes (title and text as indexing joins them)
        if row["id"] in wanted:
            texts[row["id"]] = Document(row["id"], row["text"], row.get("title") or None).text_for_encoding()
    print(f"{name}: encoding {len(doc_ids)} candidate passages and {len(candidates)} queries", file=sys.stderr)
    passages = token_sets(model, [texts[d] for d in doc_ids])
    qids = list(candidates)
    queries = token_sets(model, [dataset.queries[q] for q in qids])
    return Candidates(
        candidates,
        {side: dict(zip(doc_ids, v)) for side, v in passages.items()},
        {side: dict(zip(qids, v)) for side, v in queries.items()},
        dataset.qrels,
    )


def runs_for(name: str, data: Path, cache: Path, model) -> tuple[dict, dict]:
    """Per variant, the reranked top 100 of every query of ``name`` (a TREC-style run), and the dataset's qrels."""
    found = dense_candidates(name, data, cache, model)
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


def torch_minilm(script: str, data: Path, cache: Path):
    """The packaged MiniLM on torch (all cores) when both datasets and bench_levers' collections of them are there;
    else None, after saying what is missing (the script then exits 0)."""
    missing = [n for n in THRESHOLDS if not (data / n).is_dir() or not (cache / n).is_dir()]
    if missing:
        print(
            f"{script}: {', '.join(missing)} not found in {data} / {cache} (build them with "
            "benchmarks/bench_levers.py --cache DIR); nothing to do"
        )
        return None
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    return SentenceTransformer(minilm_path(), device="cpu", local_files_only=True)


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
