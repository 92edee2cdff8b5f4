"""The HTTP API's request and response bodies (pydantic): strict types, so a wrong one is a 422 naming the field;
the search fields' values are checked by ``twostage.search_request.SearchRequest``, not here."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from twostage.indexes.documents import id_problem


def _utf8(value: str) -> str:
    """Reject strings JSON can carry but UTF-8 cannot (lone surrogates such as ``"\\ud800"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains invalid Unicode (a lone surrogate); send valid UTF-8") from None
    return value


def _doc_id(value: str) -> str:
    """A document id as every write path takes it (``indexes.documents.id_problem``): no whitespace or control
    characters, which TREC runs and the URL routes could not hold."""
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _int64(value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise ValueError("integer out of the 64-bit range")
    return value


def _scalar(value: Any) -> str | int | float | bool:
    """A metadata value: a string, a 64-bit integer, a finite number or a boolean."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _int64(value)
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValueError("must be a string, a finite number or a boolean")


Text = Annotated[StrictStr, AfterValidator(_utf8)]


Scalar = Annotated[
    Any,
    PlainValidator(_scalar),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SearchOptions(_Strict):
    """The fields of ``twostage.search_request.SearchRequest`` (which checks their values); omitted or null fields
    take the server's defaults (``twostage serve``'s options) or the engine's."""

    top_k: StrictInt | None = Field(None, description="results returned (CLI --top-k); omitted → server default")
    candidate_depth: StrictInt | None = Field(
        None, description="first-stage candidates (CLI --candidate-depth); omitted → server default"
    )
    k: StrictInt | None = Field(None, description="deprecated name of candidate_depth")
    top_n: StrictInt | None = Field(None, description="deprecated name of top_k")
    rerank: StrictBool | None = Field(None, description="run the second stage (CLI --no-rerank is false)")
    filter: dict[Text, Scalar | None] | None = Field(
        None,
        description='metadata KEY → VALUE, all must match (CLI --filter KEY=VALUE; "2020" matches 2020, null matches null); '
        "an unknown key matches nothing",
    )
    ef_search: StrictInt | None = Field(
        None, description="HNSW search effort (CLI --ef-search); omitted → the index's own"
    )
    nprobe: StrictInt | None = Field(None, description="IVF lists scanned (CLI --nprobe); omitted → the index's own")
    first_stage: Text | None = Field(
        None,
        description="dense | bm25 | hybrid | hybrid:rrf:K | hybrid:weighted:W (CLI --first-stage); omitted → "
        "server default",
    )
    prf: Text | None = Field(
        None, description='pseudo-relevance feedback K[:BETA] (CLI --prf); "none" off; omitted → the engine\'s default'
    )
    query_tokens: Text | None = Field(
        None,
        description="MaxSim query-token weighting plain | idf | special | idf+special (CLI --query-tokens); "
        "omitted → the engine's default",
    )
    fusion: Text | None = Field(
        None,
        description='fuse both stages\' scores: rrf | zscore:W | minmax:W (CLI --fusion); "none" off; omitted → '
        "the engine's default",
    )
    rerank_depth: StrictInt | None = Field(
        None, description="rerank only the top this many candidates (CLI --rerank-depth); omitted → all"
    )
    group_by: Text | None = Field(
        None,
        description="document (each hit a document, with the passage that matched it best) | passage (CLI "
        "--group-by); omitted → server default",
    )
    explain: StrictBool | None = Field(
        None, description="with each hit's passage, which query words matched which passage words (CLI --explain)"
    )
    min_score: StrictFloat | StrictInt | None = Field(
        None,
        description="only hits whose relevance (a calibrated probability, 0-1) is at least this (CLI --min-score); "
        "omitted → no threshold",
    )


class SearchRequest(SearchOptions):
    query: Text = Field(..., description="the query text (CLI QUERY)")


class BatchSearchRequest(SearchOptions):
    queries: list[Text] = Field(..., description="the queries (CLI --queries FILE)")


class PassageOut(BaseModel):
    """The passage of a hit's document that matched (``results.PassageMatch``): where it is in the document."""

    number: int = Field(..., description="0-based passage number in its document")
    count: int = Field(..., description="passages the document was split into (1: a short document, whole)")
    start: int = Field(..., description="first character of the passage in the document's text")
    end: int = Field(..., description="character after its last")
    page: int | None = Field(..., description="its page (PDF)")
    headings: list[str] = Field(..., description="the headings of the sections it lies in, outermost first")
    score: float
    text: str
    explain: dict[str, Any] | None = Field(
        None, description="with explain: MaxSim's query word → passage word alignment and BM25's matching terms"
    )


class HitOut(BaseModel):
    """``Hit.to_dict()``: the hit shape of the CLI's ``--json`` and the Python API too; ``text`` is the passage that
    matched (a whole short document); GET /documents/{id} returns a document whole."""

    doc_id: str
    rank: int = Field(..., description="final rank (rerank rank when reranked, else first-stage rank)")
    score: float = Field(..., description="the score that decided the final order")
    relevance: float | None = Field(
        None, description="calibrated P(relevant), one scale for every query; null where no calibration applies"
    )
    retrieval_score: float
    retrieval_rank: int
    rerank_score: float | None
    rerank_rank: int | None
    title: str | None
    text: str
    metadata: dict[str, Any]
    passage: PassageOut | None = None


class TimingsOut(BaseModel):
    encode_s: float
    search_s: float
    rerank_s: float
    total_s: float


class SearchResponse(BaseModel):
    query: str
    hits: list[HitOut]
    timings: TimingsOut = Field(..., description="seconds per stage for this query (batched stages split evenly)")
    candidates: int
    reranker: str | None
    notices: list[str]
    top_k: int
    candidate_depth: int
    k: int = Field(..., description="deprecated name of candidate_depth")
    top_n: int = Field(..., description="deprecated name of top_k")
    rerank: bool
    filter: dict[str, Any] | None
    ef_search: int | None
    nprobe: int | None
    first_stage: str
    prf: str | None = Field(..., description="as asked; null = the engine's default")
    query_tokens: str | None
    fusion: str | None
    rerank_depth: int | None
    group_by: str
    explain: bool
    min_score: float | None = None
    latency_ms: float = Field(..., description="time in the server, queueing and batching included")


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]
    latency_ms: float


class DocumentIn(BaseModel):
    """The document shape of corpus files: id, text, optional title; every other field is metadata (as are the
    entries of an explicit ``metadata`` object)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    __pydantic_extra__: dict[Text, Scalar | None] = Field(init=False)

    id: Annotated[Text, AfterValidator(_doc_id)] = Field(..., min_length=1, max_length=512)
    text: Text = Field(..., min_length=1)
    title: Text | None = None
    metadata: dict[Text, Scalar | None] = Field(default_factory=dict)


class AddRequest(_Strict):
    documents: list[DocumentIn] = Field(..., min_length=1)


class DocumentOut(BaseModel):
    id: str
    text: str
    title: str | None
    metadata: dict[str, Any]


class AddResponse(BaseModel):
    added: int
    replaced: int
    unchanged: int
    passages: int = Field(..., description="passages the added and replaced documents were split into")
    split: int = Field(..., description="documents longer than the bi-encoder's window, split into passages")
    truncated: int = Field(..., description="passages still cut at the window (one word longer than it)")
    seconds: float
    documents: int = Field(..., description="documents in the collection afterwards")


class DeleteResponse(BaseModel):
    deleted: str
    documents: int


class ErrorOut(BaseModel):
    error: str
    detail: Any = None
