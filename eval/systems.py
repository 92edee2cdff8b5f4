"""How each compared system produces its run: an engine configuration (first stage x reranker x depth) searched
through ``Engine.search_queries``, the code ``twostage search --queries Q --run OUT`` runs, or a given run reranked
by the engine's rerank step (``twostage.engine.rerank_hits``).

Every system runs one query at a time, so the stage timings are real per-query latencies; one untimed
warm-up query goes first (lazy initialisation is not a query's cost). A system reranked at depth d reranks the
top d of its candidates; the rest keep their first-stage order beneath (``SearchResult.run``), so R@100 / R@1000
of a reranked system stay comparable with its first stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from twostage.eval.timing import StageTimings
from twostage.eval.trec import Queries, Run, ranked
from twostage.search_request import SearchRequest

if TYPE_CHECKING:
    from twostage.engine import Engine


@dataclass
class SystemRun:
    """One system's run and its per-query stage timings (None where latency was not measured)."""

    run: Run
    timings: StageTimings | None


def _progress(total: int, desc: str, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="query", disable=not show, leave=False)


def engine_system(
    engine: Engine, queries: Queries, request: SearchRequest, *, progress: bool = False, label: str = "search"
) -> SystemRun:
    """One system's run through ``Engine.search_queries`` (one query at a time), with the engine's stage timings;
    every candidate is returned (a collection smaller than the candidate depth gives all it has)."""
    qids = list(queries)
    k = max(1, min(request.candidate_depth, len(engine.collection)))
    request = replace(request, candidate_depth=k, top_k=k)
    engine.search(queries[qids[0]], request)  # warm-up
    with _progress(len(qids), label, progress) as bar:
        results = engine.search_queries(queries, request, one_at_a_time=True, progress=bar.update)
    return SystemRun({qid: results[qid].run() for qid in qids}, _timings(results[q] for q in qids))


def rerank_run_system(
    reranker: Any,  # a twostage.reranker Reranker (eval imports no stage)
    queries: Queries,
    given: Run,
    documents: Mapping[str, Any],
    depth: int,
    *,
    progress: bool = False,
    label: str = "rerank",
) -> SystemRun:
    """A given run's top ``depth`` per query reranked by the engine's rerank step (texts from ``documents``,
    doc id -> ``Document``), the rest beneath in the run's order; "rerank" timed (the run's own first stage was not)."""
    from twostage.indexes.documents import Document
    from twostage.rerank_step import hit_from, rerank_hits
    from twostage.results import SearchResult, Timings

    qids = list(queries)
    lists = {qid: ranked(dict(given.get(qid, {}))) for qid in qids}

    def hits_of(qid: str) -> list:  # below the depth a document's text is never read: one outside the corpus is kept
        return [
            hit_from(documents.get(docid) or Document(docid, ""), score, rank)
            for rank, (docid, score) in enumerate(lists[qid], start=1)
        ]

    first = next((q for q in qids if lists[q]), None)
    if first is not None:  # warm-up, on hits of its own
        rerank_hits(reranker, [queries[first]], [hits_of(first)[:2]])
    run: Run = {}
    timings = StageTimings()
    with _progress(len(qids), label, progress) as bar:
        for qid in qids:
            (hits,), seconds = rerank_hits(reranker, [queries[qid]], [hits_of(qid)], depth)
            result = SearchResult(
                query=queries[qid],
                hits=hits,
                timings=Timings(rerank_s=seconds),
                candidates=len(hits),
                reranker=getattr(reranker, "name", None),
            )
            run[qid] = result.run()
            timings.add("rerank", seconds)
            bar.update(1)
    return SystemRun(run, timings)


def _timings(results: Iterable[Any]) -> StageTimings:
    """Per-query encode / search / rerank seconds of engine results (a stage that never ran is left out)."""
    timings = StageTimings()
    results = list(results)
    for stage in ("encode", "search", "rerank"):
        values = [getattr(r.timings, f"{stage}_s") for r in results]
        if stage == "search" or any(values):
            for value in values:
                timings.add(stage, value)
    return timings


def rerank_texts_needed(given: Run, qids: Sequence[str], depth: int) -> set[str]:
    """The doc ids of each query's top ``depth`` in a given run: the texts its reranking needs."""
    return {docid for qid in qids for docid, _ in ranked(dict(given.get(qid, {})))[:depth]}
