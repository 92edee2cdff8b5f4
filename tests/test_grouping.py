"""Document hits from passage hits: best-passage grouping, and the second stage scoring each document's best few
passages so that the passage it prefers is the one a hit shows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from twostage.grouping import RERANK_PASSAGES, group_by_document, runners_up
from twostage.indexes.passage_store import StoredPassage
from twostage.rerank_step import rerank_hits
from twostage.reranker.base import Reranker
from twostage.results import Hit, PassageMatch


class WordCounter(Reranker):
    """Scores a text by how often the query's words occur in it (a second stage that is easy to reason about)."""

    name = "words"

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        return np.array([sum(text.lower().split().count(w) for w in query.split()) for text in texts], dtype=float)


def stored(doc_id: str, number: int, text: str) -> StoredPassage:
    return StoredPassage(
        key=f"{doc_id}#{number}", doc_id=doc_id, number=number, count=3, start=number * 100, end=number * 100 + 50,
        text=text, title=None, metadata={}, page=None, headings=[], context=None,
    )  # fmt: skip


def hit(passage: StoredPassage, score: float, rank: int) -> Hit:
    match = PassageMatch(passage.key, passage.number, passage.count, passage.start, passage.end, passage.text, score)
    return Hit(passage.doc_id, passage.text, score, rank, passage=match)


def test_best_passage_grouping_and_each_documents_runners_up():
    passages = {p.key: p for p in [stored("a", 0, "x"), stored("a", 1, "y"), stored("a", 2, "z"), stored("b", 0, "w")]}
    ranked = [("a#1", 0.9), ("b#0", 0.8), ("a#0", 0.7), ("a#2", 0.6)]
    assert group_by_document(ranked, passages, 10) == [("a#1", 0.9), ("b#0", 0.8)]
    assert runners_up(ranked, passages, 2) == {"a": [("a#0", 0.7)]}
    assert runners_up(ranked, passages, 3) == {"a": [("a#0", 0.7), ("a#2", 0.6)]}
    assert runners_up(ranked, passages, 1) == {}
    assert RERANK_PASSAGES == 1  # the default: each document's best passage (two measured within noise)


def test_a_document_takes_its_best_reranked_passage_and_shows_it():
    """Document a's best first-stage passage does not answer; its runner-up does: a ranks first and shows that one,
    keeping the document's first-stage score and rank; b, with no runner-up, is scored as before."""
    a0, a1, b0 = stored("a", 0, "opening hours"), stored("a", 1, "bike parking bike racks"), stored("b", 0, "bike")
    hits = [hit(a0, 0.9, 1), hit(b0, 0.8, 2)]
    more = {"a": [hit(a1, 0.7, 0)]}
    (ranked,), _ = rerank_hits(WordCounter(), ["bike"], [hits], None, [more])
    assert [h.doc_id for h in ranked] == ["a", "b"]
    top = ranked[0]
    assert top.passage is not None and top.passage.key == "a#1" and top.text == "bike parking bike racks"
    assert (top.rerank_score, top.second_stage_score) == (2.0, 2.0)
    assert (top.retrieval_score, top.retrieval_rank) == (0.9, 1)
    (alone,), _ = rerank_hits(WordCounter(), ["bike"], [[hit(a0, 0.9, 1), hit(b0, 0.8, 2)]])
    assert [h.doc_id for h in alone] == ["b", "a"]  # the best first-stage passage only: a does not answer
