"""One search's options as one object, validated once: the CLI, the Python API, the HTTP server and eval's system
names all build a :class:`SearchRequest` here, and nothing else parses a search option.

One name per option everywhere: ``top_k`` (results returned, as sentence-transformers' ``CrossEncoder.rank``),
``candidate_depth`` (first-stage candidates), ``rerank_depth`` (how many of them the second stage scores). The old
spellings (``k``, ``top_n``; CLI ``--k``, ``--top``) are still taken: with a DeprecationWarning in Python, a one-line
notice on the command line, silently over HTTP.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from functools import cached_property
from types import FrameType
from typing import Any

from twostage.reranker.maxsim import QueryTokens
from twostage.reranker.resolve import DEFAULT_RERANKER
from twostage.reranker.score_fusion import Fusion
from twostage.retriever.fusion import DEFAULT_FIRST_STAGE, FirstStage
from twostage.retriever.prf import PRF
from twostage.runtime.config import RuntimeConfig

from .errors import UsageError

#: a lever left at this takes the engine's default for it (``engine.MAXSIM_DEFAULTS`` when MaxSim reranks, else off)
DEFAULT = "default"
#: old option names still accepted: old -> new
RENAMED = {"k": "candidate_depth", "top_n": "top_k"}
#: the second-stage levers: name -> the parser of its spec
LEVERS = {"prf": PRF.parse, "query_tokens": QueryTokens.parse, "fusion": Fusion.parse}
#: the lever options an eval system name may carry after "/" (``dense+rerank@100/prf=3:0.5/tokens=idf``)
SYSTEM_LEVERS = {"prf": "prf", "tokens": "query_tokens", "fusion": "fusion"}
#: what a hit can be (``group_by``)
GROUP_BY = ("document", "passage")
#: fields that say how the engine runs (Engine.open/create take them), not what one search does
ENGINE_FIELDS = ("reranker", "runtime")

#: how each field is named in the error messages of the interface building the request (``--k`` on the CLI)
_NAMES: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("search_request_names", default=None)


@contextmanager
def _named(names: Mapping[str, str]) -> Iterator[None]:
    token = _NAMES.set(names)
    try:
        yield
    finally:
        _NAMES.reset(token)


@dataclass(frozen=True)
class SearchRequest:
    """Everything one search is asked to do. Construction validates every field (a one-line UsageError naming it);
    a request that exists is a valid one."""

    #: results returned
    top_k: int = 10
    #: first-stage candidates fetched (and the most the second stage can rerank)
    candidate_depth: int = 100
    #: run the second stage at all
    rerank: bool = True
    #: rerank only the top this many candidates (None: all); the rest follow in first-stage order
    rerank_depth: int | None = None
    #: dense | bm25 | hybrid | hybrid:rrf:K | hybrid:weighted[:W] (``retriever.fusion.FirstStage``); stored as its label
    first_stage: str = DEFAULT_FIRST_STAGE
    #: metadata KEY -> VALUE, all must match
    filter: Mapping[str, Any] | None = None
    #: HNSW candidates explored per query; None: the index's own
    ef_search: int | None = None
    #: IVF lists scanned per query; None: the index's own
    nprobe: int | None = None
    #: Rocchio feedback "K[:BETA]"; "default" = the engine's default, None or "none" = off
    prf: Any = DEFAULT
    #: MaxSim query tokens: plain | idf | special | idf+special; "default" / None as for prf
    query_tokens: Any = DEFAULT
    #: both stages' scores fused: rrf | zscore:W | minmax:W; "default" / None as for prf
    fusion: Any = DEFAULT
    #: what a hit is: "document" (the document, with the passage that matched it best) or "passage"
    group_by: str = "document"
    #: with each returned hit's passage, which query words matched which passage words (``twostage.explain``)
    explain: bool = False
    #: only hits whose ``relevance`` (a calibrated P(relevant), ``twostage.relevance``) is at least this; None: all
    min_score: float | None = None
    #: the second stage an engine opened with this request loads (a spec, a Reranker, or None); not per search
    reranker: Any = DEFAULT_RERANKER
    #: device, backend, batch size and threads of an engine opened with this request; not per search
    runtime: RuntimeConfig | None = None

    def __post_init__(self) -> None:
        name = _label
        for field_name in ("top_k", "candidate_depth"):
            _check_positive(field_name, getattr(self, field_name))
        for field_name in ("rerank_depth", "ef_search", "nprobe"):
            if getattr(self, field_name) is not None:
                _check_positive(field_name, getattr(self, field_name))
        for flag in ("rerank", "explain"):
            if not isinstance(getattr(self, flag), bool):
                raise UsageError(f"{name(flag)} must be true or false (got {getattr(self, flag)!r})")
        if self.group_by not in GROUP_BY:
            raise UsageError(f"{name('group_by')} must be one of {', '.join(GROUP_BY)} (got {self.group_by!r})")
        if self.min_score is not None and (
            isinstance(self.min_score, bool)
            or not isinstance(self.min_score, (int, float))
            or not 0.0 <= self.min_score <= 1.0
        ):
            raise UsageError(
                f"{name('min_score')} must be a number from 0 to 1, a calibrated probability (got {self.min_score!r})"
            )
        if self.rerank_depth is not None and self.rerank_depth > self.candidate_depth:
            raise UsageError(
                f"{name('rerank_depth')} {self.rerank_depth} is more than the {name('candidate_depth')} "
                f"{self.candidate_depth} candidates there are to rerank; lower it or raise {name('candidate_depth')}"
            )
        try:
            object.__setattr__(self, "first_stage", FirstStage.parse(self.first_stage).label)
        except ValueError as err:
            raise UsageError(_about("first_stage", err)) from None
        object.__setattr__(self, "filter", _checked_filter(self.filter))
        for lever, parse in LEVERS.items():
            value = getattr(self, lever)
            if isinstance(value, str):
                value = value.strip()
                object.__setattr__(self, lever, DEFAULT if value.lower() == DEFAULT else value)
            if not _off(value) and value != DEFAULT:
                try:
                    parse(value)
                except (ValueError, TypeError) as err:
                    raise UsageError(_about(lever, err)) from None
        if not _off(self.prf) and self.prf != DEFAULT and not self.stage.uses_dense:
            raise UsageError(
                f"{name('prf')}: pseudo-relevance feedback moves the query vector: it needs a dense or hybrid first "
                f"stage, not {self.first_stage}"
            )
        if self.runtime is not None and not isinstance(self.runtime, RuntimeConfig):
            raise UsageError(f"runtime must be a RuntimeConfig (got {type(self.runtime).__name__})")

    # ----------------------------------------------------------------- what the engine reads
    @cached_property
    def stage(self) -> FirstStage:
        """The first stage, parsed."""
        return FirstStage.parse(self.first_stage)

    def levers(self, maxsim_defaults: Mapping[str, str] | None) -> tuple[PRF | None, QueryTokens | None, Fusion | None]:
        """The feedback, query-token and fusion settings, each "default" replaced by ``maxsim_defaults``' (the engine
        passes its defaults when MaxSim reranks this search, else None: off); feedback only with a dense first stage."""
        out = []
        for lever, parse in LEVERS.items():
            value = getattr(self, lever)
            if value == DEFAULT:
                wanted = lever != "prf" or self.stage.uses_dense
                value = maxsim_defaults[lever] if maxsim_defaults is not None and wanted else None
            out.append(None if _off(value) else parse(value))
        return out[0], out[1], out[2]  # type: ignore[return-value]

    def key(self) -> str:
        """Requests with equal keys can share one batched pass (the search fields, as JSON)."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def to_dict(self) -> dict[str, Any]:
        """The search fields as JSON values (levers as given, "default" as null), for HTTP replies and logs."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ENGINE_FIELDS}
        out["filter"] = dict(self.filter) if self.filter else None
        for lever in LEVERS:
            value = out[lever]
            out[lever] = None if value == DEFAULT else "none" if value is None else getattr(value, "label", value)
        return out

    def with_options(self, **options: Any) -> SearchRequest:
        """This request with ``options`` changed (old names taken, with a DeprecationWarning)."""
        return replace(self, **_renamed(options, warn=True)) if options else self

    def within(self, limits: Mapping[str, tuple[int, str]]) -> None:
        """Each field in ``limits`` (field -> (largest value, the limit's name)) at most that: UsageError naming both
        (a server's abuse limits)."""
        for field_name, (limit, limit_name) in limits.items():
            value = getattr(self, field_name)
            if value is not None and value > limit:
                raise UsageError(f"{_label(field_name)}={value} is over the limit of {limit} ({limit_name})")

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_options(cls, request: SearchRequest | None = None, **options: Any) -> SearchRequest:
        """The Python API's request: ``request`` (or the defaults) with keyword options over it; ``k``/``top_n``
        still work, with a DeprecationWarning."""
        base = request if request is not None else cls()
        if request is not None and not isinstance(request, SearchRequest):
            raise UsageError(f"request must be a SearchRequest (got {type(request).__name__})")
        given = _renamed(options, warn=True)
        names = {new: old for old, new in RENAMED.items() if old in options}
        with _named(names):
            return replace(base, **given) if given else base

    @classmethod
    def from_json(
        cls,
        body: Mapping[str, Any],
        defaults: SearchRequest | None = None,
        *,
        limits: Mapping[str, tuple[int, str]] | None = None,
    ) -> SearchRequest:
        """An HTTP body's search fields over ``defaults`` (the server's); ``k``/``top_n`` accepted as the new names.
        Fields not set (or null) keep the default; any other key is refused; ``limits`` as in :meth:`within`."""
        given = {name: value for name, value in body.items() if value is not None}
        unknown = sorted(set(given) - _json_fields())
        if unknown:
            raise UsageError(f"{unknown[0]}: not a search option")
        names = {new: old for old, new in RENAMED.items() if old in given}
        values = _renamed(given, warn=False)
        with _named(names):
            request = replace(defaults or cls(), **values)
            request.within(limits or {})
        return request

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, search: bool = True) -> SearchRequest:
        """The request of parsed :func:`add_search_arguments` options (``twostage search``; ``twostage serve``'s
        defaults with ``search=False``). An old flag (``--k``, ``--top``) works, with a one-line notice on stderr."""
        from twostage.runtime.config import runtime_from_args

        names = {f.name: "--" + f.name.replace("_", "-") for f in fields(cls)}
        values: dict[str, Any] = {}
        for old, new in RENAMED.items():
            flag = {"k": "--k", "top_n": "--top"}[old]
            if getattr(args, old, None) is not None:
                print(f"twostage: {flag} is deprecated; use --{new.replace('_', '-')}", file=sys.stderr)
                if getattr(args, new, None) is not None:
                    raise UsageError(f"give --{new.replace('_', '-')} or {flag}, not both")
                values[new], names[new] = getattr(args, old), flag
            elif getattr(args, new, None) is not None:
                values[new] = getattr(args, new)
        values["rerank"] = not args.no_rerank
        values["first_stage"] = args.first_stage
        values["reranker"] = None if args.no_rerank else (args.reranker or DEFAULT_RERANKER)
        values["runtime"] = runtime_from_args(args)
        if getattr(args, "group_by", None) is not None:
            values["group_by"] = args.group_by
        if search:
            values["filter"] = parse_filters(args.filter)
            values["explain"] = bool(getattr(args, "explain", False))
            for name in ("rerank_depth", "ef_search", "nprobe", "prf", "query_tokens", "fusion", "min_score"):
                if getattr(args, name) is not None:
                    values[name] = getattr(args, name)
        with _named(names):
            return cls(**values)

    @classmethod
    def from_system(
        cls, name: str, candidate_depth: int, *, rrf_k: float | None = None, **options: Any
    ) -> SearchRequest:
        """An eval system's request: ``STAGE[+rerank@D][/LEVERS]`` (``dense+rerank@100/prf=3:0.5/tokens=idf``),
        ``candidate_depth`` candidates, all of them returned; ``rrf_k`` the hybrid stage's fusion constant. Levers a
        system does not name are off (``default`` starts from the engine's defaults instead). UsageError naming the
        system and its bad part."""
        base, _, lever_text = name.strip().lower().partition("/")
        stage, plus, depth_text = base.partition("+rerank")
        depth: int | None = None
        if plus:
            depth_text = depth_text.removeprefix("@")
            if depth_text and not (depth_text.isascii() and depth_text.isdigit()):
                raise UsageError(f"system {name}: the rerank depth must be a positive integer")
            depth = int(depth_text) if depth_text else options.pop("rerank_depth", None)
        try:
            levers = system_levers(lever_text)
        except ValueError as err:
            raise UsageError(f"system {name}: {err}") from None
        if rrf_k is not None and stage == "hybrid":
            stage = f"hybrid:rrf:{rrf_k:g}"
        values = dict(
            first_stage=stage,
            candidate_depth=candidate_depth,
            top_k=candidate_depth,
            rerank=bool(plus),
            rerank_depth=depth,
        )
        try:
            return cls(**{**values, **levers, **options})
        except UsageError as err:
            raise UsageError(f"system {name}: {err}") from None


def check_queries(queries: Sequence[str]) -> None:
    """The queries of one search: at least one, none empty (UsageError naming the one at fault)."""
    if not queries:
        raise UsageError("no queries given")
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            where = f"query {i + 1}" if len(queries) > 1 else "the query"
            raise UsageError(f"{where} is empty; give some words to search for")


def system_levers(text: str) -> dict[str, str]:
    """``prf=K:B/tokens=SPEC/fusion=SPEC`` (any subset, "/"-separated) -> request fields, the levers not named off;
    ``default`` starts from the engine's defaults instead (``default/fusion=rrf``). ValueError naming a bad part."""
    parts = [p for p in text.split("/") if p]
    out = {} if "default" in parts else {"prf": "none", "query_tokens": "none", "fusion": "none"}
    for part in (p for p in parts if p != "default"):
        key, eq, value = part.partition("=")
        if not eq or key not in SYSTEM_LEVERS or not value:
            raise ValueError(f"lever option {part!r}: expected default, prf=K[:BETA], tokens=SPEC or fusion=SPEC")
        out[SYSTEM_LEVERS[key]] = value
    return out


def parse_filters(pairs: list[str] | None) -> dict[str, str] | None:
    """``["lang=en", "year=2020"]`` -> ``{"lang": "en", "year": "2020"}``; a pair without '=' is a usage error."""
    filters: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--filter {pair!r}: expected KEY=VALUE")
        filters[key.strip()] = value
    return filters or None


def add_search_arguments(p: argparse.ArgumentParser, *, serve: bool = False) -> None:
    """The search options of ``twostage search`` (``serve=True``: those that set ``twostage serve``'s defaults)."""
    default = "default " if serve else ""
    defaults = SearchRequest()
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="N",
        help=f"{default}number of results (default {defaults.top_k})",
    )
    p.add_argument(
        "--candidate-depth",
        type=int,
        default=None,
        metavar="N",
        help=f"{default}first-stage candidates (default {defaults.candidate_depth})",
    )
    p.add_argument("--top", type=int, default=None, dest="top_n", help=argparse.SUPPRESS)  # old --top-k
    p.add_argument("--k", type=int, default=None, dest="k", help=argparse.SUPPRESS)  # old --candidate-depth
    p.add_argument("--no-rerank", action="store_true", help="no second stage: first-stage order")
    p.add_argument(
        "--first-stage",
        default=None,
        metavar="SPEC",
        help=f"{default}first stage: dense (the bi-encoder) | bm25 (the collection's lexical index) | hybrid "
        "(both by reciprocal rank fusion, k 60; hybrid:rrf:K another k) | hybrid:weighted[:W] (W x dense + (1 - W) x "
        f"BM25, each min-max normalised; W default 0.5); default {DEFAULT_FIRST_STAGE}",
    )
    p.add_argument(
        "--reranker",
        default=None,
        metavar="SPEC",
        help="none | maxsim (late interaction over the bi-encoder) | cross-encoder:NAME|PATH (a bare hub id or "
        "directory is a cross-encoder too); default cross-encoder/ms-marco-MiniLM-L6-v2, falling back to maxsim "
        "when it cannot be loaded",
    )
    p.add_argument(
        "--group-by",
        choices=GROUP_BY,
        default=None,
        help=f"{default}what a hit is: a document with the passage that matched it best (default), or a passage",
    )
    if serve:
        return
    p.add_argument(
        "--explain",
        action="store_true",
        help="under each hit, which query words matched which words of its passage (MaxSim's token alignment; "
        "BM25's matching terms)",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only documents whose metadata KEY equals VALUE (repeatable; all must match)",
    )
    p.add_argument(
        "--rerank-depth",
        type=int,
        default=None,
        metavar="D",
        help="rerank only the top D of the --candidate-depth candidates; the rest follow in first-stage order "
        "(default: all; what `twostage eval` calls rerank@D)",
    )
    p.add_argument(
        "--ef-search",
        type=int,
        default=None,
        metavar="N",
        help="HNSW: candidates explored per query (default 128, at least --candidate-depth); more = higher recall, "
        "slower",
    )
    p.add_argument(
        "--nprobe",
        type=int,
        default=None,
        metavar="N",
        help="IVF: inverted lists scanned per query (default nlist/64, at least 16); more = higher recall, slower",
    )
    p.add_argument(
        "--prf",
        default=None,
        metavar="K[:BETA]",
        help="pseudo-relevance feedback: move the query vector towards its top K documents "
        "(weight BETA, default 0.5) and search again; 'none' = off (unset: the engine's default "
        "when maxsim reranks, see README 'Second-stage levers')",
    )
    p.add_argument(
        "--query-tokens",
        default=None,
        metavar="SPEC",
        help="maxsim query tokens: plain | idf (weighted by IDF in the collection) | special "
        "([CLS]/[SEP] too) | idf+special (unset: the engine's default)",
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        metavar="P",
        help="only hits whose relevance (a calibrated probability of being relevant, 0-1, the same scale for every "
        "query) is at least P; e.g. 0.5 to get nothing rather than a poor answer",
    )
    p.add_argument(
        "--fusion",
        default=None,
        metavar="SPEC",
        help="final score from both stages: rrf | zscore:W | minmax:W (W = second stage's weight); "
        "'none' = the second stage's score alone (unset: the engine's default when maxsim reranks)",
    )


# --------------------------------------------------------------------------- helpers
def _label(field_name: str) -> str:
    return (_NAMES.get() or {}).get(field_name, field_name)


def _about(field_name: str, err: Exception) -> str:
    """A parser's message about a field, led by the field's name unless it already is (``fusion method must ...``)."""
    label, message = _label(field_name), str(err)
    return message if message.startswith(label.lstrip("-")) else f"{label}: {message}"


def _check_positive(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{_label(field_name)} must be a positive integer (got {value!r})")


def _checked_filter(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise UsageError(f"{_label('filter')} must map metadata keys (strings) to values (got {value!r:.80})")
    return dict(value) or None


def _off(spec: object) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "off", ""))


def _json_fields() -> set[str]:
    return {f.name for f in fields(SearchRequest) if f.name not in ENGINE_FIELDS} | set(RENAMED)


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside twostage (the user's line)."""
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("twostage"):
        frame, level = frame.f_back, level + 1
    return level


def _renamed(options: Mapping[str, Any], *, warn: bool) -> dict[str, Any]:
    """``options`` with old names under their new ones (a DeprecationWarning each when ``warn``); a field given
    under both names, or a name that is no field, is a UsageError."""
    out: dict[str, Any] = {}
    known = {f.name for f in fields(SearchRequest)}
    for name, value in options.items():
        new = RENAMED.get(name, name)
        if new not in known:
            raise UsageError(f"{name}: not a search option (the options are {', '.join(sorted(known))})")
        if new != name:
            if new in options:
                raise UsageError(f"give {new} or {name}, not both")
            if warn:
                warnings.warn(f"{name} is deprecated; use {new}", DeprecationWarning, stacklevel=_caller_level())
        out[new] = value
    return out


__all__ = ["DEFAULT", "SearchRequest", "add_search_arguments", "check_queries", "parse_filters", "system_levers"]
