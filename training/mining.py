"""The training lists: each query's candidates mined from a collection through the engine, scored by a teacher
(a reranker loaded through the engine layer, ``twostage.stages``) and labelled by judgments."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from twostage.training.common import ScoredList

Log = Callable[[str], None]


# --------------------------------------------------------------------------- mining and teacher scoring
def mine(engine: Any, queries: dict[str, str], depth: int, log: Log, progress: bool) -> list[ScoredList]:
    """Each query's dense top ``depth`` from the collection (first-stage scores kept as the list's scores)."""
    from tqdm.auto import tqdm

    qids = list(queries)
    out: list[ScoredList] = []
    log(f"mining the dense top {depth} of {len(qids)} queries from {engine.collection.path}")
    with tqdm(total=len(qids), desc="mining", unit="query", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(qids), 128):
            chunk = qids[start : start + 128]
            results = engine.search_many([queries[q] for q in chunk], candidate_depth=depth, top_k=depth, rerank=False)
            for qid, result in zip(chunk, results):
                hits = result.hits
                out.append(
                    ScoredList(
                        qid,
                        queries[qid],
                        [h.doc_id for h in hits],
                        [h.encoding_text for h in hits],
                        [float(h.retrieval_score) for h in hits],
                        [h.passage.key if h.passage is not None else h.doc_id for h in hits],
                    )
                )
            bar.update(len(chunk))
    return out


def load_teacher(spec: str, engine: Any, lists: Sequence[ScoredList], log: Log, progress: bool) -> Any:
    """The teacher ranker: "maxsim" (late interaction over the collection's bi-encoder, reading the collection's stored
    token vectors, or computing the candidates' once) or any reranker ``--reranker`` accepts."""
    from twostage.stages import mapping_lookup, maxsim, second_stage

    if spec.strip().lower() != "maxsim":
        reranker, _ = second_stage(spec, engine.encoder, engine.runtime, explicit=True)
        return reranker
    stored = getattr(engine.collection, "token_store", None)
    if stored is not None:
        log("teacher maxsim: passage token vectors from the collection's token store")
        return maxsim(engine.encoder, token_store=stored.get_many)
    texts: dict[str, str] = {}
    for item in lists:
        texts.update(zip(item.passage_keys, item.texts))
    teacher = maxsim(engine.encoder)
    store: dict[str, Any] = {}
    ids = list(texts)
    log(f"teacher maxsim: token vectors of {len(ids)} distinct candidates")
    from tqdm.auto import tqdm

    with tqdm(total=len(ids), desc="token vectors", unit="doc", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(ids), 512):
            chunk = ids[start : start + 512]
            store.update(zip(chunk, teacher.passage_token_embeddings([texts[d] for d in chunk])))
            bar.update(len(chunk))
    teacher.token_store = mapping_lookup(store)
    return teacher


def teacher_scores(teacher: Any, lists: Sequence[ScoredList], progress: bool, chunk: int = 32) -> list[list[float]]:
    """The teacher's score for every candidate of every list, in list order (``chunk`` queries per call)."""
    from tqdm.auto import tqdm

    from twostage.stages import Candidate

    scores: list[list[float]] = []
    with tqdm(total=len(lists), desc="teacher", unit="query", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(lists), chunk):
            part = lists[start : start + chunk]
            candidates = [[Candidate(key, t) for key, t in zip(x.passage_keys, x.texts)] for x in part]
            rows = teacher.score_candidates([x.query for x in part], candidates)
            scores.extend([float(v) for v in row] for row in rows)
            bar.update(len(part))
    return scores


def combine_labels(lists: Sequence[ScoredList], qrels: dict[str, dict[str, int]]) -> list[ScoredList]:
    """Teacher scores with judgments on top: a judged-relevant candidate ranks above every unjudged one (by label), a
    judged non-relevant one below all of them; unjudged candidates keep the teacher's score."""
    out = []
    for item in lists:
        labels = qrels.get(item.qid, {})
        if not labels:
            out.append(item)
            continue
        high, low = max(item.scores), min(item.scores)
        spread = max(high - low, 1.0)
        new = []
        for doc, score in zip(item.doc_ids, item.scores):
            if doc not in labels:
                new.append(score)
            elif labels[doc] > 0:
                new.append(high + spread * labels[doc])
            else:
                new.append(low - spread)
        out.append(item.subset(range(len(item.doc_ids)), new))
    return out
