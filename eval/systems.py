"""How each compared system produces its run: BM25, the dense first stage, reranking at several depths, RRF.

Every system runs one query at a time, so the stage timings are real per-query latencies; one untimed
warm-up query goes first (lazy initialisation is not a query's cost).

Reranking at depths d1 < d2 < ... scores the top max(d) candidates once, in increments (the top d1, then
ranks d1+1..d2, ...). Pointwise scores do not depend on the other candidates, so depth d's list is the first
d candidates sorted by their scores, and its rerank latency is the time spent scoring those d (cumulative over
the increments). Candidates below depth d keep their first-stage order beneath the reranked ones (scores below
the lowest reranked score), so R@100 / R@1000 of a reranked system stay comparable with its first stage.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from twostage.eval.timing import StageTimings, combine
from twostage.eval.trec import Queries, Run, ranked

Ranked = dict[str, list[tuple[str, float]]]  # {qid: [(docid, score), ...] best first}


@dataclass
class SystemRun:
    """One system's run and its per-query stage timings (None where latency was not measured)."""

    run: Run
    timings: StageTimings | None


@dataclass
class DenseCandidates:
    """The dense first stage's run plus, per query, its ranked candidates and the texts of the top ones."""

    system: SystemRun
    ranked: Ranked
    texts: dict[str, list[str]]


def _progress(items: Sequence[str], desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="query", disable=not show, leave=False)


def ranked_lists(run: Run, qids: Sequence[str]) -> Ranked:
    """Each query's documents in trec_eval order (so the top d here is the top d that is evaluated)."""
    return {qid: ranked(dict(run.get(qid, {}))) for qid in qids}


def bm25_system(retriever, queries: Queries, depth: int, *, progress: bool = False) -> SystemRun:
    """BM25 top-`depth` per query through `retriever.bm25.BM25Retriever`, timed as the "search" stage."""
    qids = list(queries)
    retriever.search([queries[qids[0]]], depth)  # warm-up
    run: Run = {}
    timings = StageTimings()
    for qid in _progress(qids, "bm25", progress):
        start = time.perf_counter()
        hits = retriever.search([queries[qid]], depth)[0]
        timings.add("search", time.perf_counter() - start)
        run[qid] = dict(hits)
    return SystemRun(run, timings)


def dense_system(engine, queries: Queries, depth: int, text_depth: int, *, progress: bool = False) -> DenseCandidates:
    """The engine's first stage (`Engine.search`, no rerank) at `depth`; keeps the top `text_depth` texts."""
    from twostage.indexes.documents import Document

    qids = list(queries)
    k = max(1, min(depth, len(engine.collection)))
    engine.search(queries[qids[0]], k=k, top_n=k, rerank=False)  # warm-up
    run: Run = {}
    texts_by_id: dict[str, dict[str, str]] = {}
    timings = StageTimings()
    for qid in _progress(qids, "dense", progress):
        result = engine.search(queries[qid], k=k, top_n=k, rerank=False)
        timings.add("encode", result.timings.encode_s)
        timings.add("search", result.timings.search_s)
        run[qid] = {hit.doc_id: hit.retrieval_score for hit in result.hits}
        texts_by_id[qid] = {hit.doc_id: Document(hit.doc_id, hit.text, hit.title).text_for_encoding()
                            for hit in result.hits}
    order = ranked_lists(run, qids)
    texts = {qid: [texts_by_id[qid][docid] for docid, _ in order[qid][:text_depth]] for qid in qids}
    return DenseCandidates(SystemRun(run, timings), order, texts)


def merge_at_depth(candidates: Sequence[tuple[str, float]], scores: Sequence[float], depth: int) -> dict[str, float]:
    """The top `depth` candidates scored by the reranker, the rest beneath them in their first-stage order."""
    top = {docid: float(score) for (docid, _), score in zip(candidates[:depth], scores)}
    floor = min(top.values(), default=0.0)
    rest = {docid: floor - i for i, (docid, _) in enumerate(candidates[len(top):], start=1)}
    return {**top, **rest}


def rerank_system(reranker, queries: Queries, candidates: Ranked, texts: Mapping[str, Sequence[str]],
                  depths: Sequence[int], *, progress: bool = False, label: str = "rerank") -> dict[int, SystemRun]:
    """Rerank each query's top max(`depths`) once (see the module docstring); one run per depth, "rerank" timed.

    Scores come from `score_candidates`, as in `Engine.search`: by doc id and text, so MaxSim reads a
    collection's stored token vectors where it has them.
    """
    from twostage.reranker.base import Candidate

    depths = sorted(set(depths))
    qids = list(queries)
    first = next((q for q in qids if texts[q]), None)
    if first is not None:  # warm-up
        warm = [Candidate(docid, text, score) for (docid, score), text in zip(candidates[first], texts[first][:2])]
        reranker.score_candidates([queries[first]], [warm])
    runs: dict[int, Run] = {d: {} for d in depths}
    timings = {d: StageTimings() for d in depths}
    for qid in _progress(qids, label, progress):
        pool = [Candidate(docid, text, score) for (docid, score), text in zip(candidates[qid], texts[qid])]
        scores: list[float] = []
        elapsed, done = 0.0, 0
        for depth in depths:
            part = pool[done:depth]
            if part:
                start = time.perf_counter()
                scores.extend(float(s) for s in reranker.score_candidates([queries[qid]], [part])[0])
                elapsed += time.perf_counter() - start
                done += len(part)
            timings[depth].add("rerank", elapsed)
            runs[depth][qid] = merge_at_depth(candidates[qid], scores[:depth], depth)
    return {d: SystemRun(runs[d], timings[d]) for d in depths}


def with_first_stage(first: SystemRun, reranked: SystemRun) -> SystemRun:
    """A reranked run whose timings include its first stage's (encode + search + rerank per query)."""
    if first.timings is None or reranked.timings is None:
        return reranked
    return SystemRun(reranked.run, combine(first.timings, reranked.timings))


def hybrid_system(bm25: SystemRun, dense: SystemRun, k: float, depth: int) -> SystemRun:
    """Reciprocal rank fusion of the BM25 and dense runs (same query order; top `depth` kept); stage times add up."""
    from twostage.retriever.fusion import reciprocal_rank_fusion

    qids = list(dense.run)
    timings = StageTimings()
    run: Run = {}
    for i, qid in enumerate(qids):
        start = time.perf_counter()
        fused = reciprocal_rank_fusion([{qid: bm25.run.get(qid, {})}, {qid: dense.run[qid]}], k=k)[qid]
        fuse_s = time.perf_counter() - start
        run[qid] = dict(ranked(fused)[:depth])
        if bm25.timings is not None and dense.timings is not None:
            timings.add("encode", dense.timings.stages["encode"][i])
            timings.add("search", dense.timings.stages["search"][i] + bm25.timings.stages["search"][i] + fuse_s)
    return SystemRun(run, timings if timings.stages else None)


#: the lever options a system name may carry after "/" (``dense+rerank@100/prf=3:0.5/tokens=idf/fusion=rrf``),
#: as the keyword arguments of ``Engine.search`` they become
LEVER_OPTIONS = {"prf": "prf", "tokens": "query_tokens", "fusion": "fusion"}


def parse_levers(text: str) -> dict[str, str]:
    """``prf=K:B/tokens=SPEC/fusion=SPEC`` (any subset, "/"-separated) -> ``Engine.search`` keyword arguments;
    ValueError naming the unknown or malformed part (the values are checked by the engine)."""
    out: dict[str, str] = {}
    for part in filter(None, text.split("/")):
        key, eq, value = part.partition("=")
        if not eq or key not in LEVER_OPTIONS or not value:
            raise ValueError(f"lever option {part!r}: expected prf=K[:BETA], tokens=SPEC or fusion=SPEC")
        out[LEVER_OPTIONS[key]] = value
    return out


def lever_system(engine, queries: Queries, depth: int, rerank: bool, options: Mapping[str, str], *,
                 progress: bool = False, label: str = "levers") -> SystemRun:
    """One ``Engine.search`` per query with the lever ``options`` (k = `depth`, all `depth` reranked when `rerank`);
    the run lists the top `depth` in the engine's order, and the engine's stage timings are kept."""
    qids = list(queries)
    k = max(1, min(depth, len(engine.collection)))
    engine.search(queries[qids[0]], k=k, top_n=k, rerank=rerank, **options)  # warm-up
    run: Run = {}
    timings = StageTimings()
    for qid in _progress(qids, label, progress):
        result = engine.search(queries[qid], k=k, top_n=k, rerank=rerank, **options)
        timings.add("encode", result.timings.encode_s)
        timings.add("search", result.timings.search_s)
        if rerank:
            timings.add("rerank", result.timings.rerank_s)
        run[qid] = {hit.doc_id: float(len(result.hits) - i) for i, hit in enumerate(result.hits)}  # the engine's order
    return SystemRun(run, timings)
