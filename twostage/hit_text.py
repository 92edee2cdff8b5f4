"""Hits as a terminal shows them: a table of ranks and scores, under each the passage that matched (where it is in its
document, a window of its text around the first query word, query words emphasised) and, with ``--explain``, why."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from twostage.indexes.lexical import query_terms

_WORD = re.compile(r"[^\W_]+")


def query_word_spans(text: str, query: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the words of ``text`` that share a query word's stem-like prefix (the query's words less
    stop words; "index" finds "indexing", "indexes"): the words a reader's eye should find."""
    stems = [_stem(t) for t in query_terms(query)]
    if not stems:
        return []
    return [(m.start(), m.end()) for m in _WORD.finditer(text) if any(_inflects(m.group().lower(), s) for s in stems)]


#: what may follow a query word's stem in a word of the passage for the word to count as one of its forms ("index" ->
#: "indexing", "indexes"; "can" does not find "canteen")
_ENDINGS = ("", "s", "es", "ed", "d", "ing", "ings", "er", "ers", "ies", "y", "ly", "ion", "ions", "ation", "ations")


def _inflects(word: str, stem: str) -> bool:
    """Whether ``word`` is ``stem`` (at least 3 letters, or the whole word) followed by a common English ending."""
    return word.startswith(stem) and (len(stem) >= 3 or word == stem) and word[len(stem) :] in _ENDINGS


def snippet(text: str, query: str, width: int = 160, emphasis: tuple[str, str] = ("*", "*")) -> str:
    """About ``width`` characters of ``text`` (whitespace folded) from a little before its first query word, each query
    word wrapped in ``emphasis``; "…" where text was left out."""
    flat = " ".join(text.split())
    spans = query_word_spans(flat, query)
    start = 0
    if spans and spans[0][0] > width // 3:
        start = flat.rfind(" ", 0, spans[0][0] - width // 4) + 1
    end = min(len(flat), start + width)
    if end < len(flat):
        end = max(flat.rfind(" ", start, end), start + width // 2)
    return ("…" if start else "") + emphasise(flat, spans, start, end, emphasis) + ("…" if end < len(flat) else "")


def emphasise(text: str, spans: Sequence[tuple[int, int]], start: int, end: int, emphasis: tuple[str, str]) -> str:
    """``text[start:end]`` with each span inside it wrapped in ``emphasis``."""
    out, at = [], start
    for s, e in spans:
        if s < at or e > end:
            continue
        out += [text[at:s], emphasis[0], text[s:e], emphasis[1]]
        at = e
    out.append(text[at:end])
    return "".join(out)


def format_hits(result: Any, snippet_width: int = 72, emphasis: tuple[str, str] = ("*", "*")) -> str:
    """A readable table: rank, doc id, relevance (calibrated P(relevant), ``-`` where none), rerank score, first-stage
    score (and rank), title; under each row the passage that matched (where in the document it is, and its text
    around the first query word, query words emphasised)."""
    if not result.hits:
        return "no results"
    id_width = min(max(6, *(len(h.doc_id) for h in result.hits)), 24)
    lines = [f"{'rank':>4}  {'doc id':<{id_width}}  {'rel.':>5}  {'rerank':>8}  {'1st stage':>14}  text"]
    for hit in result.hits:
        rerank = f"{hit.rerank_score:8.3f}" if hit.rerank_score is not None else f"{'-':>8}"
        relevance = f"{hit.relevance:5.2f}" if hit.relevance is not None else f"{'-':>5}"
        first = f"{hit.retrieval_score:.3f} (#{hit.retrieval_rank})"
        passage = hit.passage
        whole = passage is None or passage.count == 1  # a short document: one line, as it always was
        if whole:
            text = (f"{hit.title}: " if hit.title else "") + " ".join(hit.text.split())
            head = text if len(text) <= snippet_width else text[: snippet_width - 1] + "…"
        else:
            head = hit.title or ""
        lines.append(
            f"{hit.rank:>4}  {hit.doc_id[:id_width]:<{id_width}}  {relevance}  {rerank}  {first:>14}  {head}".rstrip()
        )
        if not whole:
            where = [f"passage {passage.number + 1}/{passage.count}"] if passage.count > 1 else []
            where += [f"page {passage.page}"] if passage.page is not None else []
            where += [" › ".join(passage.headings)] if passage.headings else []
            place = f"[{', '.join(where)}] " if where else ""
            lines.append(f"      {place}{snippet(hit.text, result.query, 2 * snippet_width, emphasis)}")
        if passage is not None and passage.explain:
            lines.extend(f"      {line}" for line in explain_lines(passage.explain))
    t = result.timings
    stage = f"reranked by {result.reranker}" if result.reranker else "first stage only"
    lines.append(
        f"{result.candidates} candidates, {stage}; encode {t.encode_s * 1000:.0f} ms, "
        f"search {t.search_s * 1000:.0f} ms, rerank {t.rerank_s * 1000:.0f} ms"
    )
    return "\n".join(lines)


def explain_lines(explain: dict[str, Any]) -> list[str]:
    """``--explain``'s lines under a hit: each query word and the passage word MaxSim aligned it with (and how alike),
    then the terms BM25 matched."""
    lines = []
    if explain.get("maxsim"):
        pairs = ", ".join(f"{m['query']}→{m['passage']} {m['similarity']:.2f}" for m in explain["maxsim"])
        lines.append(f"maxsim: {pairs}")
    if "bm25" in explain:
        terms = ", ".join(
            f"{m['term']}→{'/'.join(dict.fromkeys(w['text'] for w in m['words']))}" for m in explain["bm25"]
        )
        lines.append(f"bm25: {terms or 'no query term in this passage'}")
    return lines


def emphasis() -> tuple[str, str]:
    """How query words stand out in a passage: bold on a terminal (unless NO_COLOR), else *word*."""
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        return ("\033[1m", "\033[0m")
    return ("*", "*")


def _stem(term: str) -> str:
    """A crude English stem (common suffixes off), enough to find a query word's other forms in a passage."""
    for suffix in ("ations", "ation", "ings", "ing", "ies", "es", "ed", "s"):
        if term.endswith(suffix) and len(term) - len(suffix) >= 3:
            return term[: -len(suffix)]
    return term
