"""The HTTP API and search page of ``twostage serve``: FastAPI on uvicorn, one engine worker behind a micro-batcher.

Endpoints (schema at ``/openapi.json``; no ``/docs``: Swagger UI loads its scripts from a CDN, blank offline)::

    GET    /                     the search page
    GET    /health               liveness, document count, read-only flag, defaults and limits (never protected)
    GET    /stats                collection size, models, backend, index type, query counts, latency percentiles
    POST   /search               one query          (fields = the options of ``twostage search``)
    POST   /search/batch         several queries    (= ``twostage search --queries``)
    GET    /documents/{id}       one stored document
    POST   /documents            add or replace documents             (token)
    DELETE /documents/{id}       delete one document                  (token)

Errors are JSON ``{"error": "<one line for a person>", "detail": <more, or null>}``:
400 bad JSON / bad body encoding / engine usage error, 401 no token, 403 wrong token or read-only,
404 unknown document or route, 405 wrong method, 413 body, batch or add too large, 422 wrong field types,
missing fields, empty query or a value over its limit; 503 while shutting down, with too many requests in
progress, or (with Retry-After) while another process holds the collection's writer lock; 400 for a Host header
not among ``--allowed-hosts``. A filter on a metadata key
that no document has matches nothing (200 with no hits), like a key whose value no document has.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Batcher, WorkerStopped
from .errors import UsageError
from .search_request import SearchRequest as Search  # server_models.SearchRequest is the HTTP body
from .server_http import BodyLimit, HostCheck, RequestBudget, ServerThread, redact_access_log
from .server_models import (
    AddRequest,
    AddResponse,
    BatchSearchRequest,
    BatchSearchResponse,
    DeleteResponse,
    DocumentOut,
    ErrorOut,
    SearchOptions,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger("twostage.server")
STATIC = Path(__file__).resolve().parent / "static"


# --------------------------------------------------------------------------- configuration
@dataclass
class ServerConfig:
    """Access control, abuse limits (documented defaults) and the search defaults of a server."""

    #: bearer token for writes (and reads with ``protect_reads``); None → the server is read-only
    token: str | None = None
    #: require the token for searches, document reads and stats too (``/health`` and ``/`` stay open)
    protect_reads: bool = False
    max_query_chars: int = 1000
    max_k: int = 1000
    max_top_n: int = 100
    #: largest per-request search effort (HNSW efSearch, IVF nprobe): each costs time linearly
    max_ef_search: int = 4096
    max_nprobe: int = 4096
    #: queries per ``/search/batch`` request
    max_batch: int = 64
    max_body_bytes: int = 1_000_000
    max_docs_per_add: int = 1000
    #: how long the worker waits for more searches to batch with the first one
    batch_window_ms: float = 5.0
    #: queries per encoder/rerank pass
    max_batch_queries: int = 32
    #: search defaults for fields a request leaves out (the CLI's --candidate-depth, --top-k, --no-rerank,
    #: --first-stage)
    candidate_depth: int = 100
    top_k: int = 10
    rerank: bool = True
    first_stage: str = "dense"
    #: searches kept for the latency percentiles of ``/stats``
    latency_window: int = 1000
    #: requests in progress before new ones get 503 (``/health`` is never refused; idle connections do not count)
    max_connections: int = 256
    #: Host header names served (DNS-rebinding protection); None serves any (``twostage serve`` always sets them)
    allowed_hosts: tuple[str, ...] | None = None
    #: the old names of ``candidate_depth`` and ``top_k`` (deprecated)
    k: InitVar[int | None] = None
    top_n: InitVar[int | None] = None

    def __post_init__(self, k: int | None, top_n: int | None) -> None:
        for old, new, value in (("k", "candidate_depth", k), ("top_n", "top_k", top_n)):
            if value is not None:
                warnings.warn(f"ServerConfig({old}=) is deprecated; use {new}=", DeprecationWarning, stacklevel=3)
                setattr(self, new, value)

    @property
    def read_only(self) -> bool:
        return not self.token

    def defaults(self) -> Search:
        """The search request a body's omitted fields take (UsageError if the defaults themselves are bad)."""
        return Search(
            candidate_depth=self.candidate_depth, top_k=self.top_k, rerank=self.rerank, first_stage=self.first_stage
        )

    def search_limits(self) -> dict[str, tuple[int, str]]:
        """The abuse limits on search fields: field -> (largest value, the limit's name)."""
        return {
            "candidate_depth": (self.max_k, "max_k"),
            "top_k": (self.max_top_n, "max_top_n"),
            "ef_search": (self.max_ef_search, "max_ef_search"),
            "nprobe": (self.max_nprobe, "max_nprobe"),
        }

    def limits(self) -> dict[str, int]:
        keys = (
            "max_query_chars",
            "max_k",
            "max_top_n",
            "max_ef_search",
            "max_nprobe",
            "max_batch",
            "max_body_bytes",
            "max_docs_per_add",
        )
        return {key: getattr(self, key) for key in keys}


class ApiError(Exception):
    """An error reply: status, a one-line message and optional detail."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


# --------------------------------------------------------------------------- statistics
class QueryStats:
    """Counters and a rolling window of search latencies (seconds), safe to update from the event loop."""

    def __init__(self, window: int):
        self.latencies: deque[float] = deque(maxlen=window)
        self.counts = {
            "search_requests": 0,
            "batch_requests": 0,
            "queries": 0,
            "adds": 0,
            "deletes": 0,
            "client_errors": 0,
            "server_errors": 0,
        }
        self.started = time.time()

    def record(self, seconds: float, queries: int, batch: bool) -> None:
        self.latencies.append(seconds)
        self.counts["batch_requests" if batch else "search_requests"] += 1
        self.counts["queries"] += queries

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies, dtype=float) * 1000
        pct = {f"p{p}": round(float(np.percentile(lat, p)), 3) if len(lat) else None for p in (50, 95, 99)}
        return {
            "counts": dict(self.counts),
            "latency_ms": {"window": len(lat), "mean": round(float(lat.mean()), 3) if len(lat) else None, **pct},
            "uptime_s": round(time.time() - self.started, 1),
        }


# --------------------------------------------------------------------------- the app
def create_app(engine: Any, config: ServerConfig | None = None) -> FastAPI:
    """An app serving ``engine``: an Engine, or (better) a zero-argument factory that opens one.

    The engine is opened now, inside the worker thread that will own it (its SQLite connection is
    single-thread), so that errors surface before the server starts listening. ``app.state.batcher``
    holds the worker; the app's shutdown closes it.
    """
    config = config or ServerConfig()
    factory: Callable[[], Any] = engine if callable(engine) else (lambda: engine)
    batcher = Batcher(
        factory, window_s=config.batch_window_ms / 1000, max_batch_queries=config.max_batch_queries, on_open=_warm_up
    )
    batcher.start()
    stats = QueryStats(config.latency_window)

    async def lifespan(app: FastAPI) -> Any:  # an async generator, which Starlette wraps as the lifespan context
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(
        title="twostage",
        summary="Two-stage retrieve-and-rerank search: bi-encoder + FAISS, then a cross-encoder.",
        description=__doc__.split("\n\n", 1)[1] + "\n\nLimits: " + json.dumps(config.limits()),
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: blank pages offline
        redoc_url=None,
        responses={status: {"model": ErrorOut} for status in (400, 401, 403, 413, 422)},
    )
    app.state.batcher, app.state.config, app.state.stats = batcher, config, stats
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestBudget, limit=config.max_connections)
    if config.allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=config.allowed_hosts)
    redact_access_log()
    _install_error_handlers(app, stats)
    bearer = HTTPBearer(auto_error=False, description="the server's token (twostage serve --token)")

    def check_token(credentials: HTTPAuthorizationCredentials | None) -> None:
        if credentials is None:
            raise ApiError(
                401,
                "this needs the server's token: send 'Authorization: Bearer TOKEN'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), str(config.token).encode()):
            raise ApiError(403, "wrong token")

    def read_access(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.protect_reads and config.token:
            check_token(credentials)

    def write_access(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.read_only:
            raise ApiError(403, "the server is read-only: start it with --token (or TWOSTAGE_TOKEN) to allow writes")
        check_token(credentials)

    reads = [Depends(read_access)]
    writes = [Depends(write_access)]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.head("/health", include_in_schema=False)
    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and what the page needs to know; never behind the token."""
        return {
            "status": "ok" if batcher.alive else "down",
            "documents": batcher.documents,
            "read_only": config.read_only,
            "reads_protected": bool(config.protect_reads and config.token),
            "defaults": {  # the old names, kept for clients that read them
                "k": config.candidate_depth,
                "top_n": config.top_k,
                "rerank": config.rerank,
                "first_stage": config.first_stage,
            },
            "search_defaults": config.defaults().to_dict(),
            "limits": config.limits(),
        }

    @app.get("/stats", dependencies=reads)
    async def get_stats() -> dict[str, Any]:
        """Collection size, models, backend, index type, query counts and latency percentiles."""
        info = await _await(batcher.call(_engine_info))
        return {**info, **stats.to_dict(), "batching": batcher.stats_dict(), "read_only": config.read_only}

    @app.post("/search", response_model=SearchResponse, dependencies=reads)
    async def search(req: SearchRequest) -> dict[str, Any]:
        """One query through both stages."""
        started = time.perf_counter()
        request = _request(req, config, [req.query])
        results = await _await(batcher.search([req.query], request))
        elapsed = time.perf_counter() - started
        stats.record(elapsed, 1, batch=False)
        return _result(results[0], request, elapsed)

    @app.post("/search/batch", response_model=BatchSearchResponse, dependencies=reads)
    async def search_batch(req: BatchSearchRequest) -> dict[str, Any]:
        """Several queries with the same options, answered in one batched pass."""
        if not req.queries:
            raise ApiError(422, "queries is empty; give at least one query")
        if len(req.queries) > config.max_batch:
            raise ApiError(413, f"{len(req.queries)} queries in one batch; the limit is {config.max_batch} (max_batch)")
        started = time.perf_counter()
        request = _request(req, config, req.queries)
        results = await _await(batcher.search(req.queries, request))
        elapsed = time.perf_counter() - started
        stats.record(elapsed, len(req.queries), batch=True)
        return {"results": [_result(r, request, elapsed) for r in results], "latency_ms": elapsed * 1000}

    @app.get(
        "/documents/{doc_id:path}", response_model=DocumentOut, dependencies=reads, responses={404: {"model": ErrorOut}}
    )
    async def get_document(doc_id: str) -> dict[str, Any]:
        """A stored document by id."""
        doc = (await _await(batcher.call(lambda engine: engine.get([doc_id]))))[0]
        if doc is None:
            raise ApiError(404, f"no document with id {doc_id!r}")
        return {"id": doc.id, "text": doc.text, "title": doc.title, "metadata": dict(doc.metadata)}

    @app.post("/documents", response_model=AddResponse, dependencies=writes)
    async def add_documents(req: AddRequest) -> dict[str, Any]:
        """Add documents, or replace those whose id exists; searchable as soon as this returns."""
        if len(req.documents) > config.max_docs_per_add:
            raise ApiError(
                413,
                f"{len(req.documents)} documents in one call; the limit is "
                f"{config.max_docs_per_add} (max_docs_per_add): split them over several calls",
            )
        docs = [d.model_dump() for d in req.documents]
        report = await _await(batcher.call(lambda engine: engine.add(docs), write=True))
        stats.counts["adds"] += 1
        return {
            **{
                k: getattr(report, k)
                for k in ("added", "replaced", "unchanged", "passages", "split", "truncated", "seconds")
            },
            "documents": batcher.documents,
        }

    @app.delete(
        "/documents/{doc_id:path}",
        response_model=DeleteResponse,
        dependencies=writes,
        responses={404: {"model": ErrorOut}},
    )
    async def delete_document(doc_id: str) -> dict[str, Any]:
        """Delete a document; it never comes back in results."""
        report = await _await(batcher.call(lambda engine: engine.delete([doc_id]), write=True))
        if not report.deleted:
            raise ApiError(404, f"no document with id {doc_id!r}")
        stats.counts["deletes"] += 1
        return {"deleted": doc_id, "documents": batcher.documents}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _request(req: SearchOptions, config: ServerConfig, queries: list[str]) -> Search:
    """The body's search request over the server's defaults, checked against the limits (422 naming the field)."""
    for i, query in enumerate(queries):
        where = "query" if len(queries) == 1 else f"queries[{i}]"
        if not query.strip():
            raise ApiError(422, f"{where} is empty; give some words to search for")
        if len(query) > config.max_query_chars:
            raise ApiError(
                422, f"{where} has {len(query)} characters; the limit is {config.max_query_chars} (max_query_chars)"
            )
    try:
        body = req.model_dump(exclude={"query", "queries"})
        return Search.from_json(body, config.defaults(), limits=config.search_limits())
    except UsageError as err:
        raise ApiError(422, str(err)) from None


def _result(result: Any, request: Search, elapsed: float) -> dict[str, Any]:
    out = result.to_dict()
    if request.filter and not result.hits:
        out["notices"].append("no document matches the filter")
    shown = {**request.to_dict(), "k": request.candidate_depth, "top_n": request.top_k}
    return {**out, **shown, "latency_ms": elapsed * 1000}


async def _await(future: Any) -> Any:
    return await asyncio.wrap_future(future)


def _warm_up(engine: Any) -> None:
    """Load the reranker (printing any fallback notice at start-up) and run the encoder once."""
    _ = engine.reranker
    engine.encoder.encode_queries(["warm up"])


def _engine_info(engine: Any) -> dict[str, Any]:
    info = engine.info()
    reranker = engine.reranker
    return {
        "documents": len(engine.collection),
        "index_type": info.get("index_type"),
        "backend": engine.encoder.backend_tag,
        "models": {
            "bi_encoder": engine.encoder.name,
            "reranker": getattr(reranker, "name", None),
        },
        "notices": list(engine.notices),
        # no paths on disk: where the collection and models live is no business of an HTTP client
        "collection": {k: v for k, v in info.items() if k not in ("bi_encoder", "reranker", "path")},
    }


def _version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------- errors
def _install_error_handlers(app: FastAPI, stats: QueryStats) -> None:
    def reply(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
        stats.counts["server_errors" if status >= 500 else "client_errors"] += 1
        return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return reply(err.status, err.error, err.detail, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [_clean(e) for e in err.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return reply(400, "the body is not valid JSON", errors)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return reply(422, f"{where}: {first['msg']}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = err.detail if isinstance(err.detail, str) else "request failed"
        if err.status_code == 400 and "parsing the body" in message:  # FastAPI keeps the reason as the cause
            message = (
                "the body is nested too deeply to be read as JSON"
                if isinstance(err.__cause__, RecursionError)
                else "the body is not valid UTF-8"
                if isinstance(err.__cause__, UnicodeDecodeError)
                else "the body could not be read as JSON"
            )
        return reply(err.status_code, message, None, getattr(err, "headers", None))

    async def usage_error(request: Request, err: Exception) -> JSONResponse:
        return reply(400, str(err))

    for error in _request_errors():
        app.add_exception_handler(error, usage_error)

    async def storage_error(request: Request, err: Exception) -> JSONResponse:
        from twostage.indexes.lock import LockBusy, ReadOnlyCollection

        if isinstance(err, LockBusy):  # another process is writing: the client may try again shortly
            # the holder's pid, command line and the path on disk are for the machine's own log, not for clients
            log.warning("%s", err)
            return reply(
                503, "the collection is being changed by another process; try again shortly", None, {"Retry-After": "1"}
            )
        if isinstance(err, ReadOnlyCollection):
            return reply(403, str(err))
        log.error("%s %s: %s", request.method, request.url.path, err)
        return reply(500, str(err))

    from twostage.indexes.errors import CollectionError

    app.add_exception_handler(CollectionError, storage_error)

    @app.exception_handler(WorkerStopped)
    async def stopped(request: Request, err: WorkerStopped) -> JSONResponse:
        return reply(503, "the search engine is not running (the server is shutting down)")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return reply(500, "internal error; see the server log", type(err).__name__)


def _request_errors() -> tuple[type[Exception], ...]:
    """Engine errors that mean "this request cannot be served as given": answered with 400."""
    from twostage.indexes.errors import CorpusError

    return (UsageError, CorpusError)


def _clean(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error without its (possibly huge or unserialisable) input."""
    return {
        "loc": [p if isinstance(p, (str, int)) else str(p) for p in error.get("loc", ())],
        "msg": str(error.get("msg", "")),
        "type": str(error.get("type", "")),
    }


__all__ = ["ApiError", "ServerConfig", "ServerThread", "create_app"]
