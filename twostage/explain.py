"""Why a passage matched: which query words met which words of the passage.

Two views, both exact for what they explain: MaxSim's token alignment (each query word's token vectors against the
passage's, from the collection's own bi-encoder: the passage word holding the most similar token, and that cosine),
and BM25's matching terms (SQLite FTS5 with the lexical index's own tokenizer, porter stemming included, run over
the passage alone, so "indexing" matches "indexes" exactly when BM25 would). Offsets are into the hit's ``text``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any

import numpy as np

from twostage.indexes.lexical import STOPWORDS, TOKENIZER, query_terms
from twostage.reranker.maxsim import MaxSimReranker

from .results import Hit

_WORD = re.compile(r"[^\W_]+")
_OPEN, _CLOSE = "\x02", "\x03"


def explain_hits(encoder: Any, query: str, hits: Sequence[Hit]) -> None:
    """Attach ``passage.explain`` (``{"maxsim": [...], "bm25": [...]}``) to each hit that has a passage."""
    hits = [h for h in hits if h.passage is not None]
    if not hits:
        return
    prefixes = [f"{h.passage.context}. " if h.passage.context else "" for h in hits]  # type: ignore[union-attr]
    alignments = maxsim_alignment(
        encoder, query, [p + h.text for p, h in zip(prefixes, hits)], [len(p) for p in prefixes]
    )
    for hit, alignment in zip(hits, alignments):
        hit.passage.explain = {"maxsim": alignment, "bm25": bm25_matches(query, hit.text)}  # type: ignore[union-attr]


def maxsim_alignment(encoder: Any, query: str, texts: Sequence[str], skips: Sequence[int]) -> list[list[dict]]:
    """Per text: for each query word (stop words left out), the text word holding the token most similar to one of
    its tokens, its offsets (``skips[i]`` characters, the title and headings, are taken off; None where the word is in
    them) and the cosine. Tokens and vectors are MaxSim's: content tokens, unit length."""
    reranker = MaxSimReranker(encoder)
    if reranker.light is not None:  # the exported model: no torch to load for an explanation
        vectors = reranker._light_passages([query, *texts])
        offsets = _light_offsets(reranker.light, [query, *texts])
    else:
        vectors = reranker.passage_token_embeddings([query, *texts])
        offsets = _content_offsets(reranker.model, [query, *texts], reranker.max_length)
    query_vectors, query_offsets = vectors[0].astype(np.float32), offsets[0]
    words = _token_words(query, query_offsets)
    out = []
    for text, skip, passage_vectors, passage_offsets in zip(texts, skips, vectors[1:], offsets[1:]):
        similarity = query_vectors @ passage_vectors.astype(np.float32).T
        aligned: dict[str, dict] = {}
        for token, word in enumerate(words):
            if word is None or word[2].lower() in STOPWORDS or not len(passage_offsets):
                continue
            best = int(np.argmax(similarity[token]))
            value = float(similarity[token, best])
            if word[2] in aligned and aligned[word[2]]["similarity"] >= value:
                continue
            start, end = _word_around(text, passage_offsets[best])
            aligned[word[2]] = {
                "query": word[2],
                "passage": text[start:end],
                "start": start - skip if start >= skip else None,
                "end": end - skip if start >= skip else None,
                "similarity": round(value, 4),
            }
        out.append(list(aligned.values()))
    return out


def bm25_matches(query: str, text: str) -> list[dict]:
    """Each query term BM25 finds in ``text`` and the words of ``text`` it matched there (offsets into ``text``)."""
    matches = []
    with closing(sqlite3.connect(":memory:")) as con:
        con.execute(f"CREATE VIRTUAL TABLE passage USING fts5(body, tokenize='{TOKENIZER}')")
        con.execute("INSERT INTO passage(body) VALUES (?)", (text,))
        for term in query_terms(query):
            row = con.execute(
                "SELECT highlight(passage, 0, ?, ?) FROM passage WHERE passage MATCH ?",
                (_OPEN, _CLOSE, '"' + term.replace('"', '""') + '"'),
            ).fetchone()
            if row is not None:
                matches.append({"term": term, "words": _marked_spans(row[0])})
    return matches


def _marked_spans(marked: str) -> list[dict]:
    """The spans FTS5's ``highlight`` wrapped in the markers, as offsets into the unmarked text."""
    spans, plain_at, start = [], 0, 0
    text_parts = []
    for char in marked:
        if char == _OPEN:
            start = plain_at
        elif char == _CLOSE:
            spans.append((start, plain_at))
        else:
            text_parts.append(char)
            plain_at += 1
    plain = "".join(text_parts)
    return [{"text": plain[s:e], "start": s, "end": e} for s, e in spans]


def _content_offsets(model: Any, texts: Sequence[str], limit: int) -> list[list[tuple[int, int]]]:
    """Per text, the character offsets of the tokens MaxSim keeps (truncated alike, special tokens left out)."""
    tokenizer = model.tokenizer
    special = set(tokenizer.all_special_ids)
    encoded = tokenizer(list(texts), truncation=True, max_length=limit, return_offsets_mapping=True)
    return [
        [tuple(o) for i, o in zip(ids, offs) if i not in special]
        for ids, offs in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]


def _light_offsets(light: Any, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """:func:`_content_offsets` from the exported model's own tokenizer (truncating at its window already)."""
    special = set(light.special_ids)
    return [
        [tuple(o) for i, o in zip(e.ids, e.offsets) if i not in special]
        for e in light.tokenizer.encode_batch(list(texts))
    ]


def _token_words(text: str, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int, str] | None]:
    """For each token, the word of ``text`` it lies in (``(start, end, word)``), None for punctuation."""
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
    out: list[tuple[int, int, str] | None] = []
    for start, _ in offsets:
        out.append(next((w for w in words if w[0] <= start < w[1]), None))
    return out


def _word_around(text: str, offset: tuple[int, int]) -> tuple[int, int]:
    """The whole word of ``text`` that the token at ``offset`` is part of (the token itself if it is no word)."""
    start, end = offset
    if not text[start:end].isalnum():
        return start, end
    while start > 0 and (text[start - 1].isalnum()):
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return start, end
