"""The one small base class every second stage implements: score (query, text) pairs, then sort."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: what to pass instead of a reranker that cannot be loaded, in the Python API's words and in the command line's
INSTEAD_PYTHON = "pass reranker=PATH (a local cross-encoder directory), reranker='maxsim', or reranker=None"
INSTEAD_CLI = "pass --reranker PATH (a local cross-encoder directory), --reranker maxsim, or --no-rerank"


class RerankerLoadError(RuntimeError):
    """A reranker model that cannot be loaded; the message says why and, with ``advise``, what to pass instead: in
    Python's words as ``str(error)``, in the command line's from :meth:`cli_message`.

    ``reason`` is the short why (e.g. "not available offline"), for one-line notices built around it.
    """

    def __init__(self, message: str, *, reason: str = "", advise: bool = False):
        super().__init__(f"{message}; {INSTEAD_PYTHON}" if advise else message)
        self.detail = message
        self.advise = advise
        self.reason = reason or message

    def cli_message(self) -> str:
        """The message with the command line's advice (``--reranker ...``) instead of Python's."""
        return f"{self.detail}; {INSTEAD_CLI}" if self.advise else self.detail


class CandidateLike(Protocol):
    """What a reranker reads of a candidate: a :class:`Candidate`, or the engine's own hit as it is."""

    @property
    def doc_id(self) -> str: ...

    @property
    def encoding_text(self) -> str: ...

    @property
    def retrieval_score(self) -> float: ...


@dataclass
class Candidate:
    """A first-stage candidate handed to a reranker. Rerankers read ``doc_id``, ``encoding_text`` and
    ``retrieval_score`` only, so the engine hands them its own hits (``twostage.results.Hit``) as they are."""

    doc_id: str
    text: str
    score: float = 0.0

    @property
    def encoding_text(self) -> str:
        """The text the second stage scores (title and text joined, as the encoders see it)."""
        return self.text

    @property
    def retrieval_score(self) -> float:
        """The first-stage score (score fusion reads it)."""
        return self.score


@dataclass
class Reranked:
    """One reranked candidate: its position in the input list and its second-stage score (raw, higher is better)."""

    index: int
    doc_id: str
    score: float


class Reranker(ABC):
    """Scores (query, passage) pairs. Subclasses implement :meth:`score`; sorting and the ``rank`` format live here."""

    name: str = "reranker"
    #: passages cut at the model's length limit since this reranker was created (reported, never hidden)
    truncated: int = 0

    @abstractmethod
    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """One raw relevance score per text, higher is more relevant."""

    def score_batch(self, queries: Sequence[str], texts_per_query: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Scores for several queries at once; subclasses override to batch across queries."""
        return [self.score(q, t) for q, t in zip(queries, texts_per_query)]

    def score_candidates(
        self, queries: Sequence[str], candidates_per_query: Sequence[Sequence[CandidateLike]]
    ) -> list[np.ndarray]:
        """:meth:`score_batch` over the candidates' texts; rerankers that can use doc ids (MaxSim's token store) override."""
        return self.score_batch(queries, [[c.encoding_text for c in candidates] for candidates in candidates_per_query])

    def rerank(self, query: str, candidates: Sequence[CandidateLike], top_n: int | None = None) -> list[Reranked]:
        """Candidates sorted by second-stage score (stable on ties: first-stage order wins); scored through
        :meth:`score_candidates`, so rerankers that use doc ids or first-stage scores need not override this."""
        if not candidates:
            return []
        return _sorted(candidates, self.score_candidates([query], [candidates])[0], top_n)

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
    ) -> list[dict[str, Any]]:
        """Same shape and defaults as sentence-transformers' ``CrossEncoder.rank``: ``[{"corpus_id", "score"}]``, plus
        ``"text"`` with ``return_documents=True``; scores are raw (the library's with ``activation_fn=Identity()``)."""
        scores = self.score(query, list(documents)) if documents else np.zeros(0)
        order = np.argsort(-scores, kind="stable")
        return rank_rows(documents, order, scores[order], top_k, return_documents)


def rank_rows(
    documents: Sequence[str],
    order: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    top_k: int | None = None,
    return_documents: bool = False,
) -> list[dict[str, Any]]:
    """``CrossEncoder.rank``'s rows: the first ``top_k`` of ``order`` (indices into ``documents``, best first) with
    their ``scores`` (in the same order), and each text with ``return_documents``."""
    rows = []
    for i, score in list(zip(order, scores))[:top_k]:
        row: dict[str, Any] = {"corpus_id": int(i), "score": float(score)}
        if return_documents:
            row["text"] = documents[i]
        rows.append(row)
    return rows


def _sorted(candidates: Sequence[CandidateLike], scores: np.ndarray, top_n: int | None) -> list[Reranked]:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    if top_n is not None:
        order = order[:top_n]
    return [Reranked(int(i), candidates[i].doc_id, float(scores[i])) for i in order]
