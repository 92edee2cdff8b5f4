"""Turn a reranker spec string into a reranker through a registry of kinds, falling back to MaxSim only for the
implicit default.

Specs: ``none`` (no second stage), ``maxsim`` (late interaction over the collection's bi-encoder, or without one
the default bi-encoder), ``maxsim:NAME|PATH`` (over that bi-encoder), ``cross-encoder:NAME|PATH``, and a bare hub id
or directory, which is a cross-encoder too. Every kind loads by name alone: no collection is needed. A new kind is one
:func:`register_reranker` call; ``--reranker KIND:ARG`` then reaches it from the CLI, the server and eval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twostage.runtime.models import DEFAULT_BI_ENCODER, ModelLoadError

from .base import Reranker, RerankerLoadError
from .maxsim import MaxSimReranker, TokenStore
from .resolve import DEFAULT_RERANKER, OFFLINE, locate_cross_encoder

#: the spec of the implicit default: the default cross-encoder, or MaxSim when that cannot be loaded
DEFAULT_SPEC = "default"


class RerankerFallbackWarning(UserWarning):
    """The implicit default reranker could not be loaded and MaxSim stands in (``Engine`` warns once per process)."""


@dataclass(frozen=True)
class LoadContext:
    """What a reranker kind may need besides its argument: the collection's bi-encoder and token store, and how
    models run (from the engine's RuntimeConfig)."""

    encoder: Any = None
    token_store: TokenStore | None = None
    device: str = "cpu"
    batch_size: int = 32
    max_length: int | None = None
    backend: str | None = "torch"
    threads: int | None = None


#: builds a reranker (None: no second stage) from the spec's argument (the text after ``KIND:``, may be empty)
RerankerFactory = Callable[[str, LoadContext], "Reranker | None"]
_KINDS: dict[str, RerankerFactory] = {}


def register_reranker(kind: str, factory: RerankerFactory) -> None:
    """Make ``KIND`` and ``KIND:ARG`` specs build ``factory(ARG, context)``; registering a kind again replaces it."""
    _KINDS[kind.strip().lower()] = factory


def reranker_kinds() -> list[str]:
    """The registered kinds, for help texts and error messages."""
    return sorted(_KINDS)


def parse_spec(spec: str) -> tuple[str, str]:
    """``(kind, argument)`` of a spec: ``KIND`` or ``KIND:ARG`` for a registered kind, else a cross-encoder name/path."""
    text = spec.strip()
    if text.lower() == DEFAULT_SPEC:
        return "cross-encoder", DEFAULT_RERANKER
    kind, sep, arg = text.partition(":")
    if kind.strip().lower() in _KINDS:
        return kind.strip().lower(), arg.strip() if sep else ""
    return "cross-encoder", text


def is_implicit_default(spec: Any) -> bool:
    """The one rule on fallbacks: only the default the user did not choose (``default`` or the default
    cross-encoder's id, as the CLI fills it in) may fall back to MaxSim; anything the user named may not."""
    return isinstance(spec, str) and spec.strip() in (DEFAULT_SPEC, DEFAULT_RERANKER)


def load_reranker(
    spec: str | None,
    *,
    encoder: Any = None,
    explicit: bool | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    max_length: int | None = None,
    token_store: TokenStore | None = None,
    backend: str | None = "torch",
    threads: int | None = None,
) -> tuple[Reranker | None, str | None]:
    """``(reranker or None, one-line notice or None)`` for ``spec`` (None: no second stage).

    ``backend``/``device``/``threads`` run a cross-encoder (MaxSim follows the bi-encoder). Only when ``spec`` is the
    implicit default (``explicit`` None: decided by :func:`is_implicit_default`) and the default cross-encoder cannot
    be loaded, this falls back to MaxSim over ``encoder`` (the default bi-encoder when None) and says so in the
    notice; otherwise RerankerLoadError."""
    if spec is None:
        return None, None
    context = LoadContext(encoder, token_store, device, batch_size, max_length, backend, threads)
    kind, arg = parse_spec(spec)
    try:
        return _KINDS[kind](arg, context), None
    except RerankerLoadError as error:
        implicit = is_implicit_default(spec) if explicit is None else not explicit
        if not implicit or (kind, arg) != ("cross-encoder", DEFAULT_RERANKER):
            raise
        why = "is not available offline" if error.reason == OFFLINE else f"cannot be loaded ({error.reason})"
        notice = f"reranker: {DEFAULT_RERANKER} {why}; using late-interaction MaxSim over the bi-encoder instead"
        return _maxsim("", context), notice


def _none(arg: str, context: LoadContext) -> None:
    """``none``: no second stage."""
    _no_argument("none", arg)
    return None


def _maxsim(arg: str, context: LoadContext) -> MaxSimReranker:
    """``maxsim``: late interaction over the collection's bi-encoder, reading its token store when there is one;
    ``maxsim:NAME|PATH`` or no collection: over that bi-encoder (default: all-MiniLM-L6-v2), loaded here."""
    if context.encoder is not None and not arg:
        return MaxSimReranker(context.encoder, token_store=context.token_store, batch_size=context.batch_size)
    try:
        return MaxSimReranker(arg or DEFAULT_BI_ENCODER, batch_size=context.batch_size, device=context.device)
    except ModelLoadError as error:
        raise RerankerLoadError(f"reranker: maxsim: {error}", reason="bi-encoder not found") from None


def _cross_encoder(arg: str, context: LoadContext) -> Reranker:
    """``cross-encoder:NAME|PATH`` (or the bare name/path); torch is imported only once the model is found."""
    if not arg:
        raise RerankerLoadError("reranker: an empty cross-encoder name", reason="empty name", advise=True)
    locate_cross_encoder(arg)
    from .cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker(
        arg,
        device=context.device,
        batch_size=context.batch_size,
        max_length=context.max_length,
        backend=context.backend,
        threads=context.threads,
    )


def _no_argument(kind: str, arg: str) -> None:
    if arg:
        raise RerankerLoadError(f"reranker: {kind} takes no argument (got {kind}:{arg})", reason="bad spec")


register_reranker("none", _none)
register_reranker("maxsim", _maxsim)
register_reranker("cross-encoder", _cross_encoder)
