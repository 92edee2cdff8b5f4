"""Plain, JSON-serialisable results of a search: hits with both stage scores and ranks, and per-stage timings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from twostage.indexes.documents import encoding_text


@dataclass
class PassageMatch:
    """The passage of a hit's document that matched: passage ``number`` (0-based) of ``count``, its characters
    ``start:end`` in the document, its page (PDF) and heading path, and its score (the hit's, under best-passage
    grouping). ``key`` names its stored row (what MaxSim's stored tokens are read by); ``context`` is the title and
    heading path the encoders read before it."""

    key: str
    number: int
    count: int
    start: int
    end: int
    text: str
    score: float = 0.0
    page: int | None = None
    headings: list[str] = field(default_factory=list)
    context: str | None = None
    explain: dict[str, Any] | None = None  #: with ``explain``: which query words matched which passage words

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "number": self.number,
            "count": self.count,
            "start": self.start,
            "end": self.end,
            "page": self.page,
            "headings": list(self.headings),
            "score": self.score,
            "text": self.text,
        }
        if self.explain is not None:
            out["explain"] = self.explain
        return out


@dataclass
class Hit:
    """One result, in this one form from the first stage to the output (the reranker scores it as its candidate): a
    document and (``passage``) the passage of it that matched. ``text`` is that passage's text (the whole document
    when it is one passage: a hit never carries the whole of a long document). ``retrieval_*`` come from the first
    stage; ``rerank_*`` are None when the second stage was skipped."""

    doc_id: str
    text: str
    retrieval_score: float
    retrieval_rank: int
    rerank_score: float | None = None
    rerank_rank: int | None = None
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    passage: PassageMatch | None = None
    #: P(relevant), calibrated (``twostage.relevance``): one scale for every query and collection, what ``min_score``
    #: thresholds; None where no fit exists (another bi-encoder, a cross-encoder, IDF query tokens, a BM25 first
    #: stage without a second stage)
    relevance: float | None = None
    #: the second stage's own score before fusion with the first stage's (what the relevance is computed from)
    second_stage_score: float | None = field(default=None, repr=False)

    @property
    def encoding_text(self) -> str:
        """The text the encoders and the second stage see (``indexes.documents.encoding_text``): a passage after its
        context (the title and, in a long document, its heading path)."""
        return encoding_text(self.text, self.passage.context if self.passage is not None else self.title)

    @property
    def score(self) -> float:
        """The score that decided the final order."""
        return self.rerank_score if self.rerank_score is not None else self.retrieval_score

    @property
    def rank(self) -> int:
        """The final rank (1 = best): the second stage's when it ran, else the first stage's."""
        return self.rerank_rank if self.rerank_rank is not None else self.retrieval_rank

    def to_dict(self) -> dict[str, Any]:
        """The one JSON shape of a hit (CLI ``--json``, :meth:`SearchResult.to_dict`, HTTP): the final ``rank`` and
        ``score`` first, then both stages' own."""
        return {
            "doc_id": self.doc_id,
            "rank": self.rank,
            "score": self.score,
            "relevance": self.relevance,
            "retrieval_score": self.retrieval_score,
            "retrieval_rank": self.retrieval_rank,
            "rerank_score": self.rerank_score,
            "rerank_rank": self.rerank_rank,
            "title": self.title,
            "text": self.text,
            "metadata": dict(self.metadata),
            "passage": self.passage.to_dict() if self.passage is not None else None,
        }


@dataclass
class Timings:
    """Seconds spent per stage for one query (batched stages are split evenly over the batch's queries)."""

    encode_s: float = 0.0
    search_s: float = 0.0
    rerank_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Seconds for the whole search: encoding, first stage and reranking."""
        return self.encode_s + self.search_s + self.rerank_s


@dataclass
class SearchResult:
    """Hits for one query, best first, with what produced them."""

    query: str
    hits: list[Hit]
    timings: Timings
    candidates: int
    reranker: str | None = None
    notices: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Hit]:
        """The hits, best first."""
        return iter(self.hits)

    def __len__(self) -> int:
        """The number of hits."""
        return len(self.hits)

    def __getitem__(self, index: int) -> Hit:
        """The hit at ``index`` (0 = best)."""
        return self.hits[index]

    def to_pandas(self) -> Any:
        """The hits as a ``pandas.DataFrame``, one row per hit in :meth:`Hit.to_dict`'s columns, metadata fields as
        ``metadata.NAME`` columns; ImportError in one line without pandas."""
        try:
            import pandas
        except ImportError:
            raise ImportError("SearchResult.to_pandas needs pandas: pip install pandas") from None
        if not self.hits:
            return pandas.DataFrame(columns=list(Hit("", "", 0.0, 0).to_dict()))
        return pandas.json_normalize([hit.to_dict() for hit in self.hits])

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON values: hits in :meth:`Hit.to_dict`'s shape, timings with their total."""
        out = asdict(self)
        out["hits"] = [hit.to_dict() for hit in self.hits]
        out["timings"]["total_s"] = self.timings.total_s
        return out

    def run(self) -> dict[str, float]:
        """This result as one query's row of a TREC run: doc id → a score that falls down the list. Reranked hits keep
        their rerank score; hits beneath them that the second stage did not score keep their order, at the last
        rerank score minus 1, 2, ... (first-stage scores are on another scale)."""
        reranked = [h.rerank_score for h in self.hits if h.rerank_score is not None]
        floor = min(reranked) if reranked else None
        out: dict[str, float] = {}
        for hit in self.hits:
            if floor is None or hit.rerank_score is not None:
                out[hit.doc_id] = hit.score
            else:
                floor -= 1.0
                out[hit.doc_id] = floor
        return out
