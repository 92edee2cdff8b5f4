"""Two further feedback levers for the MaxSim second stage, measured against the engine's default (issue 14): are
they worth adding to the engine? Neither is in it; this script implements both from the engine's public pieces.

- **reranked feedback** ``K:BETA``: Rocchio (``retriever.prf.rocchio``) over the top K of the *default's final*
  ranking instead of the first stage's, then a second dense search and the default's rerank (MaxSim with [CLS]/[SEP],
  min-max fusion) of the new candidates.
- **expansion** ``K:E:BETA`` (ColBERT-PRF style, Wang et al. 2021): the stored tokens of the default's final top K are
  clustered (k-means, 24 centroids); the E centroids whose nearest token is rarest (IDF in the collection) join the
  query with weight BETA times that IDF (scaled to mean 1); the default's candidates are rescored and fused again.

    python benchmarks/bench_feedback.py     # writes benchmarks/results/feedback.json and feedback.md

Settings are chosen on cacm-tune (bench_levers' split: the cacm queries at even positions in qid order) by nDCG@10
and reported on cacm-held-out and msmarco-dl20, never tuned on. Collections are bench_levers' (int8 tokens, built
once into ``--cache``). Quality only: the variants run in batches here, so no per-query latency is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np  # noqa: E402
from common import (  # noqa: E402  (first: repo importable, hub off)
    THRESHOLDS,
    build_collection,
    cacm_split,
    levers_arguments,
    machine,
    markdown,
    metrics,
    minilm_path,
)

from twostage.engine import MAXSIM_DEFAULTS, Engine  # noqa: E402
from twostage.eval.datasets import load_folder  # noqa: E402
from twostage.eval.significance import compare  # noqa: E402
from twostage.indexes.documents import Document  # noqa: E402
from twostage.reranker.base import Candidate  # noqa: E402
from twostage.reranker.maxsim import content_token_ids  # noqa: E402
from twostage.reranker.score_fusion import Fusion, fuse_scores  # noqa: E402
from twostage.retriever.biencoder import BiEncoder  # noqa: E402
from twostage.retriever.prf import PRF, rocchio  # noqa: E402

K = 100
CLUSTERS = 24
RERANKED_GRID = [(k, b) for k in (3, 5, 10) for b in (0.25, 0.5, 1.0)]
EXPANSION_GRID = [(k, e, b) for k in (3, 5, 10) for e in (5, 10) for b in (0.1, 0.25, 0.5, 1.0)]


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


class Feedback:
    """One dataset's queries through the engine's default, and both variants computed from that run."""

    def __init__(self, engine: Engine, queries: dict[str, str]):
        self.engine, self.qids = engine, list(queries)
        self.texts = [queries[q] for q in self.qids]
        self.fusion = Fusion.parse(MAXSIM_DEFAULTS["fusion"])
        self.maxsim = engine.reranker.with_query_tokens(MAXSIM_DEFAULTS["query_tokens"])
        self.default = engine.search_many(self.texts, k=K, top_n=K)  # MAXSIM_DEFAULTS: prf, tokens, fusion
        self.dense = engine.search_many(self.texts, k=K, top_n=K, rerank=False, prf="none")
        self.vectors = engine.encoder.encode_queries(self.texts)
        self.idf = engine.token_idf()
        self._clusters: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        # the default's candidates in first-stage order, their first-stage scores, plain (unfused) MaxSim and tokens
        self.candidates = []
        for text, result in zip(self.texts, self.default):
            hits = sorted(result.hits, key=lambda h: h.retrieval_rank)
            ids = [h.doc_id for h in hits]
            tokens = [unit(t) for t in engine.collection.token_store.get_many(ids)]
            cands = [Candidate(h.doc_id, Document(h.doc_id, h.text, h.title).text_for_encoding()) for h in hits]
            maxsim = self.maxsim.score_candidates([text], [cands])[0]
            self.candidates.append((ids, [h.retrieval_score for h in hits], np.asarray(maxsim), tokens))

    @staticmethod
    def ranked(ids: list[str], scores) -> dict[str, float]:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return {ids[i]: float(len(ids) - r) for r, i in enumerate(order)}

    def runs(self, results) -> dict[str, dict[str, float]]:
        return {q: {h.doc_id: float(len(r.hits) - i) for i, h in enumerate(r.hits)} for q, r in zip(self.qids, results)}

    def reranked_feedback(self, k: int, beta: float) -> dict[str, dict[str, float]]:
        """Rocchio over the default's final top ``k``, a second dense search, the default's rerank and fusion."""
        collection, prf = self.engine.collection, PRF(k, beta)
        moved = np.stack(
            [
                rocchio(v, collection.embeddings_of([h.doc_id for h in r.hits[:k]]), prf)
                for v, r in zip(self.vectors, self.default)
            ]
        )
        run = {}
        for qid, text, found in zip(self.qids, self.texts, collection.search(moved, K)):
            ids = [doc_id for doc_id, _ in found]
            docs = {d.id: d for d in collection.get(ids) if d is not None}
            cands = [Candidate(i, docs[i].text_for_encoding()) for i in ids]
            second = self.maxsim.score_candidates([text], [cands])[0]
            run[qid] = self.ranked(ids, fuse_scores([s for _, s in found], list(second), self.fusion))
        return run

    def centroids(self, qid: str, top: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """k-means centroids of the ``top`` passages' stored tokens, and the IDF of each one's nearest token."""
        import faiss

        key = (qid, len(top))
        if key not in self._clusters:
            tokens = unit(np.concatenate(list(self.engine.collection.token_store.get_many(top))))
            docs = self.engine.collection.get(top)
            ids = np.concatenate(content_token_ids(self.engine.encoder, [d.text_for_encoding() for d in docs]))
            if len(ids) != len(tokens):
                raise SystemExit(f"stored tokens ({len(tokens)}) and token ids ({len(ids)}) of {top} disagree")
            kmeans = faiss.Kmeans(
                tokens.shape[1], min(CLUSTERS, len(tokens)), niter=20, seed=1, verbose=False, min_points_per_centroid=1
            )  # a few passages: ~200 tokens for 24 centroids
            kmeans.train(tokens)
            centroids = unit(kmeans.centroids)
            self._clusters[key] = (centroids, np.asarray(self.idf(ids[(centroids @ tokens.T).argmax(axis=1)])))
        return self._clusters[key]

    def expansion(self, k: int, e: int, beta: float) -> dict[str, dict[str, float]]:
        """The default's candidates rescored with ``e`` expansion centroids from its final top ``k`` (ColBERT-PRF)."""
        run = {}
        for qid, result, (ids, first, maxsim, tokens) in zip(self.qids, self.default, self.candidates):
            centroids, idf = self.centroids(qid, [h.doc_id for h in result.hits[:k]])
            chosen = np.argsort(-idf, kind="stable")[:e]
            weights = idf[chosen] / idf[chosen].mean()
            extra = np.array([float(((t @ centroids[chosen].T).max(axis=0) * weights).sum()) for t in tokens])
            run[qid] = self.ranked(ids, fuse_scores(first, list(maxsim + beta * extra), self.fusion))
        return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    levers_arguments(parser)
    args = parser.parse_args()
    if not (args.data / "msmarco-dl20").is_dir() or not (args.data / "cacm").is_dir():
        print(f"bench_feedback: msmarco-dl20 and cacm not found in {args.data}; nothing to do")
        return 0
    started = time.time()
    encoder = BiEncoder(minilm_path())
    sets = {name: load_folder(args.data / name) for name in ("cacm", "msmarco-dl20")}
    for name, ds in sets.items():
        build_collection(ds, encoder, args.cache / name)
    tune_qids, held_qids = cacm_split(sets["cacm"].queries)
    parts = {
        "cacm-tune": ("cacm", tune_qids),
        "cacm-held-out": ("cacm", held_qids),
        "msmarco-dl20": ("msmarco-dl20", list(sets["msmarco-dl20"].queries)),
    }
    engines = {name: Engine.open(args.cache / name, encoder=encoder, reranker="maxsim") for name in sets}

    def score(part: str, run: dict) -> float:
        dataset = parts[part][0]
        return metrics(run, sets[dataset].qrels, THRESHOLDS[dataset])[0]["nDCG@10"]

    feedback = {
        part: Feedback(engines[ds], {q: sets[ds].queries[q] for q in qids}) for part, (ds, qids) in parts.items()
    }
    tune = feedback["cacm-tune"]
    print("tuning on cacm-tune", file=sys.stderr)
    grid = {f"reranked feedback {k}:{b:g}": score("cacm-tune", tune.reranked_feedback(k, b)) for k, b in RERANKED_GRID}
    grid |= {f"expansion {k}:{e}:{b:g}": score("cacm-tune", tune.expansion(k, e, b)) for k, e, b in EXPANSION_GRID}
    default_tune = score("cacm-tune", tune.runs(tune.default))
    best = {
        kind: max((s for s in grid if s.startswith(kind)), key=grid.__getitem__)
        for kind in ("reranked feedback", "expansion")
    }
    print(f"chosen: {best}", file=sys.stderr)

    tables = {}
    for part in ("cacm-held-out", "msmarco-dl20"):
        fb = feedback[part]
        dataset, qids = parts[part]
        systems = {"dense": fb.runs(fb.dense), "engine default (MAXSIM_DEFAULTS)": fb.runs(fb.default)}
        for kind, setting in best.items():
            values = [float(x) for x in setting.rsplit(" ", 1)[1].split(":")]
            systems[setting] = (
                fb.reranked_feedback(int(values[0]), values[1])
                if kind == "reranked feedback"
                else fb.expansion(int(values[0]), int(values[1]), values[2])
            )
        measured = {name: metrics(run, sets[dataset].qrels, THRESHOLDS[dataset]) for name, run in systems.items()}
        rows = []
        for name, (aggregate, per_query) in measured.items():
            row = {"system": name, **{m: round(v, 4) for m, v in aggregate.items()}}
            for base, column in (("dense", "p vs dense"), ("engine default (MAXSIM_DEFAULTS)", "p vs default")):
                if name not in ("dense", base):
                    row[column] = round(compare(measured[base][1], per_query, "nDCG@10").p_randomization, 4)
            rows.append(row)
        tables[part] = rows

    result = {
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpu": machine(),
        "k": K,
        "tuned_on": {
            "dataset": "cacm",
            "queries": parts["cacm-tune"][1],
            "measure": "nDCG@10",
            "engine default": round(default_tune, 4),
        },
        "grid": {name: round(v, 4) for name, v in grid.items()},
        "chosen": best,
        "tables": tables,
        "seconds": round(time.time() - started, 1),
    }
    for engine in engines.values():
        engine.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "feedback.json").write_text(json.dumps(result, indent=1))
    cols = ["system", "nDCG@10", "MRR@10", "R@100", "p vs dense", "p vs default"]
    md = [
        "# Feedback from the reranked list and expansion embeddings (benchmarks/bench_feedback.py)",
        "",
        f"Chosen on cacm-tune ({len(parts['cacm-tune'][1])} queries) by nDCG@10, where the engine default scores "
        f"{default_tune:.4f}: " + "; ".join(f"{s} ({grid[s]:.4f})" for s in best.values()) + ". k = 100; p: paired "
        f"randomization test on nDCG@10 (10,000 resamples). {result['cpu']}; {result['seconds']:.0f} s.",
        "",
    ]
    for part, rows in tables.items():
        md += [markdown(rows, part, cols), ""]
    md += ["Tuning grid (cacm-tune nDCG@10): " + ", ".join(f"{s} {v:.4f}" for s, v in grid.items()), ""]
    (args.out / "feedback.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
