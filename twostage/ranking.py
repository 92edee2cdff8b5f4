"""Two-stage ranking of texts given in the call, in memory, with no collection: the first stage (the bi-encoder's
cosine over the texts) picks ``candidate_depth`` candidates, the second stage reorders them, and the answer has the
shape of sentence-transformers' ``CrossEncoder.rank``.

``twostage.rank(query, texts)`` keeps one :class:`Ranker` per settings in this process, so the second call with the
same models pays no loading; build a :class:`Ranker` yourself to hold the models explicitly.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Sequence
from types import FrameType
from typing import Any

import numpy as np

from twostage.reranker.base import Candidate, Reranker, rank_rows
from twostage.reranker.loading import DEFAULT_SPEC, RerankerFallbackWarning, load_reranker
from twostage.reranker.maxsim import MaxSimReranker, QueryTokens
from twostage.reranker.score_fusion import FusedReranker, Fusion
from twostage.retriever.biencoder import BiEncoder
from twostage.retriever.prf import PRF, rocchio
from twostage.runtime.autotune import measured
from twostage.runtime.config import RuntimeConfig, runtime_config
from twostage.runtime.models import DEFAULT_BI_ENCODER

from .engine import MAXSIM_DEFAULTS
from .errors import UsageError
from .search_request import SearchRequest

#: first-stage candidates the second stage reorders: ``Engine.search``'s default
DEFAULT_CANDIDATE_DEPTH: int = SearchRequest.candidate_depth


class Ranker:
    """A bi-encoder (first stage) and a reranker (second stage), loaded once and used for any number of
    :meth:`rank` calls over texts given in the call.

    ``reranker`` is a spec as everywhere in twostage ("default": the default cross-encoder, or late-interaction MaxSim
    over the bi-encoder with a :class:`RerankerFallbackWarning` where it cannot be loaded; "maxsim", "maxsim:NAME",
    "cross-encoder:NAME|PATH", a bare cross-encoder name or directory, "none"), a :class:`Reranker`, or None for the
    first stage alone. With MaxSim, the feedback, query-token and fusion defaults of ``Engine.search`` apply."""

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_BI_ENCODER,
        reranker: Reranker | str | None = "default",
        *,
        candidate_depth: int = DEFAULT_CANDIDATE_DEPTH,
        runtime: RuntimeConfig | None = None,
        device: str | None = None,
        backend: str | None = None,
        batch_size: int | None = None,
    ):
        _check_depth("candidate_depth", candidate_depth)
        self.candidate_depth = candidate_depth
        #: device, backend, batch size and threads of both stages (``device=``, ``backend=``, ``batch_size=`` are
        #: shorthands for its fields)
        self.runtime = runtime_config(runtime, device=device, backend=backend, batch_size=batch_size)
        placed_on, chosen = self.runtime.placement()
        auto = measured(self.runtime.backend, placed_on)  # auto: this machine's cached choice, never measured here
        self.encoder = BiEncoder(
            model,
            device=placed_on,
            batch_size=self.runtime.batch_size,
            backend="auto" if auto else chosen,
            threads=self.runtime.threads,
        )
        #: one-line messages about how the ranker was built (a reranker fallback), also given as warnings
        self.notices: list[str] = []
        self.reranker: Reranker | None
        if reranker is None or isinstance(reranker, Reranker):
            self.reranker = reranker
        else:
            self.reranker, notice = load_reranker(
                reranker,
                encoder=self.encoder,
                explicit=reranker.strip().lower() != DEFAULT_SPEC,  # a model the caller named never falls back
                device=placed_on,
                batch_size=self.runtime.batch_size,
                backend="auto" if auto else chosen,
                threads=self.runtime.threads,
            )
            if notice:
                self.notices.append(notice)
                _warn_caller(notice)
        # MaxSim gets Engine.search's defaults: Rocchio feedback in the first stage, query tokens and score fusion
        levers = _maxsim_levers() if isinstance(self.reranker, MaxSimReranker) else (None, None, None)
        self._prf: PRF | None = levers[0]
        query_tokens, fusion = levers[1], levers[2]
        #: the second stage alone (MaxSim with its query-token default), for texts with no first-stage score
        self._alone: Reranker | None = self.reranker
        if isinstance(self.reranker, MaxSimReranker) and query_tokens is not None:
            self._alone = self.reranker.with_query_tokens(query_tokens)
        self._second_stage = FusedReranker(self._alone, fusion) if fusion and self._alone else self._alone

    def rank(
        self,
        query: str,
        texts: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        *,
        candidate_depth: int | None = None,
    ) -> list[dict[str, Any]]:
        """``texts`` ranked for ``query``, best first, as ``CrossEncoder.rank`` returns them: ``[{"corpus_id": index
        into texts, "score": float}]``, plus ``"text"`` with ``return_documents``. Only the first stage's top
        ``candidate_depth`` (default: the ranker's) are reranked and returned; ``top_k`` cuts the list further."""
        texts = _checked_texts(query, texts)
        if top_k is not None:
            _check_depth("top_k", top_k)
        depth = self.candidate_depth if candidate_depth is None else _check_depth("candidate_depth", candidate_depth)
        if not texts:
            return []
        order, first_scores = self._first_stage(query, texts, depth)
        if self._second_stage is None:
            scores = first_scores
        else:
            candidates = [Candidate(str(i), texts[i], float(s)) for i, s in zip(order, first_scores)]
            raw = np.asarray(self._second_stage.score_candidates([query], [candidates])[0], dtype=np.float64)
            resort = np.argsort(-raw, kind="stable")  # ties keep first-stage order
            order, scores = order[resort], raw[resort]
        return rank_rows(texts, order, scores, top_k, return_documents)

    def rerank(
        self, query: str, texts: Sequence[str], top_k: int | None = None, return_documents: bool = False
    ) -> list[dict[str, Any]]:
        """The second stage alone: every one of ``texts`` (say, another retriever's results) scored by the reranker
        and sorted, in :meth:`rank`'s shape. A ranker with no reranker refuses (UsageError)."""
        texts = _checked_texts(query, texts)
        if top_k is not None:
            _check_depth("top_k", top_k)
        if self._alone is None:
            raise UsageError("this Ranker has no reranker (reranker=None); build it with one to rerank texts")
        return self._alone.rank(query, texts, top_k, return_documents)

    def _first_stage(self, query: str, texts: list[str], depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``depth`` text indices by the bi-encoder's score and their scores, best first (exact: every text
        is scored); with MaxSim reranking, the query first moves towards its top documents as ``Engine.search``
        does (Rocchio feedback)."""
        vectors = self.encoder.encode_documents(texts).embeddings
        query_vector = self.encoder.encode_queries([query])[0]
        scores = vectors @ query_vector
        if self._prf is not None:
            top = np.argsort(-scores, kind="stable")[: self._prf.k]
            scores = vectors @ rocchio(query_vector, vectors[top], self._prf)
        order = np.argsort(-scores, kind="stable")[:depth]
        return order, scores[order].astype(np.float64)


def _maxsim_levers() -> tuple[PRF | None, QueryTokens | None, Fusion | None]:
    """The feedback, query-token and fusion settings ``Engine.search`` uses when MaxSim reranks."""
    return SearchRequest().levers(MAXSIM_DEFAULTS)


def _warn_caller(notice: str) -> None:
    """A RerankerFallbackWarning pointing at the caller's line (the first frame outside this module)."""
    frame: FrameType | None = sys._getframe(0)
    level = 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(notice, RerankerFallbackWarning, stacklevel=level)


def _checked_texts(query: Any, texts: Any) -> list[str]:
    """``texts`` as a list, or a UsageError naming what is wrong with the query or the texts."""
    if not isinstance(query, str) or not query.strip():
        raise UsageError("the query is empty; give some words to rank the texts by")
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise UsageError(f"texts must be a list of strings, not {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UsageError(f"texts[{i}] is a {type(text).__name__}, not a string")
    return list(texts)


def _check_depth(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer (got {value!r})")
    return value


_RANKERS: dict[tuple[Any, ...], Ranker] = {}
_RANKERS_LOCK = threading.Lock()


def rank(
    query: str,
    texts: Sequence[str],
    top_k: int | None = None,
    return_documents: bool = False,
    *,
    model: str | os.PathLike[str] = DEFAULT_BI_ENCODER,
    reranker: str | None = "default",
    candidate_depth: int = DEFAULT_CANDIDATE_DEPTH,
    runtime: RuntimeConfig | None = None,
) -> list[dict[str, Any]]:
    """``texts`` ranked for ``query`` in two stages, in the shape of ``CrossEncoder.rank`` (see :meth:`Ranker.rank`).
    The models load on the first call with these settings and are kept for the next (one :class:`Ranker` each)."""
    key = (os.fspath(model), reranker, candidate_depth, runtime)
    with _RANKERS_LOCK:
        ranker = _RANKERS.get(key)
        if ranker is None:
            ranker = _RANKERS[key] = Ranker(model, reranker, candidate_depth=candidate_depth, runtime=runtime)
    return ranker.rank(query, texts, top_k, return_documents)
