"""How each compared system produces its run: an engine configuration (first stage x reranker x depth) searched
through ``Engine.search_queries``, the code ``twostage search --queries Q --run OUT`` runs, or a given run reranked
by the engine's rerank step (``twostage.engine.rerank_hits``).

Every system runs one query at a time, so the stage timings are real per-query latencies; one untimed
warm-up query goes first (lazy initialisation is not a query's cost). A system reranked at depth d reranks the
top d of its candidates; the rest keep their first-stage order beneath (``SearchResult.run``), so R@100 / R@1000
of a reranked system stay comparable with its first stage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twostage.eval.timing import StageTimings
from twostage.eval.trec import Queries, Run, ranked

#: the lever options a system name may carry after "/" (``dense+rerank@100/prf=3:0.5/tokens=idf/fusion=rrf``),
#: as the keyword arguments of ``Engine.search`` they become
LEVER_OPTIONS = {"prf": "prf", "tokens": "query_tokens", "fusion": "fusion"}


@dataclass
class SystemRun:
    """One system's run and its per-query stage timings (None where latency was not measured)."""

    run: Run
    timings: StageTimings | None


def _progress(total: int, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="query", disable=not show, leave=False)


def parse_levers(text: str) -> dict[str, str]:
    """``prf=K:B/tokens=SPEC/fusion=SPEC`` (any subset, "/"-separated) -> ``Engine.search`` keyword arguments, the
    levers not named off (so ``dense+rerank@100`` is plain MaxSim); ``default`` starts from the engine's defaults
    instead (``default/fusion=rrf``). ValueError naming the unknown or malformed part (the engine checks values)."""
    parts = [p for p in text.split("/") if p]
    out = {} if "default" in parts else {"prf": "none", "query_tokens": "none", "fusion": "none"}
    for part in (p for p in parts if p != "default"):
        key, eq, value = part.partition("=")
        if not eq or key not in LEVER_OPTIONS or not value:
            raise ValueError(f"lever option {part!r}: expected default, prf=K[:BETA], tokens=SPEC or fusion=SPEC")
        out[LEVER_OPTIONS[key]] = value
    return out


def engine_options(first_stage: str, depth: int | None, k: int, levers: str = "") -> dict[str, Any]:
    """The ``Engine.search`` options of one system: ``first_stage`` (a ``FirstStage`` spec) with ``k`` candidates,
    the top ``depth`` reranked (none when None), plus its lever options."""
    return {
        "first_stage": first_stage,
        "k": k,
        "top_n": k,
        "rerank": depth is not None,
        "rerank_depth": depth,
        **parse_levers(levers),
    }


def engine_system(
    engine, queries: Queries, options: Mapping[str, Any], *, progress: bool = False, label: str = "search"
) -> SystemRun:
    """One system's run through ``Engine.search_queries`` (one query at a time), with the engine's stage timings."""
    qids = list(queries)
    k = max(1, min(int(options["k"]), len(engine.collection)))
    options = {**options, "k": k, "top_n": k}
    engine.search(queries[qids[0]], **options)  # warm-up
    with _progress(len(qids), label, progress) as bar:
        results = engine.search_queries(queries, one_at_a_time=True, progress=bar.update, **options)
    return SystemRun({qid: results[qid].run() for qid in qids}, _timings(results[q] for q in qids))


def rerank_run_system(
    reranker,
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
    from twostage.engine import hit_from, rerank_hits
    from twostage.indexes.documents import Document
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


def _timings(results) -> StageTimings:
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
