"""The search options ``twostage search`` and ``twostage serve`` share, declared once, and the reranker they name."""

from __future__ import annotations

import argparse


def add_search_arguments(p: argparse.ArgumentParser, *, k: int = 100, top_n: int = 10, serve: bool = False) -> None:
    """``--k``, ``--top``, ``--no-rerank`` and ``--reranker`` (for ``serve`` they set the server's defaults)."""
    default = "default " if serve else ""
    p.add_argument("--k", type=int, default=k, help=f"{default}first-stage candidate depth (default {k})")
    p.add_argument("--top", type=int, default=top_n, dest="top_n", help=f"{default}number of results (default {top_n})")
    p.add_argument("--no-rerank", action="store_true", help="no second stage: first-stage order")
    p.add_argument(
        "--first-stage",
        default="dense",
        metavar="SPEC",
        help=f"{default}first stage: dense (the bi-encoder, default) | bm25 (the collection's lexical index) | hybrid "
        "(both by reciprocal rank fusion, k 60; hybrid:rrf:K another k) | hybrid:weighted[:W] (W x dense + (1 - W) x "
        "BM25, each min-max normalised; W default 0.5)",
    )
    p.add_argument(
        "--reranker",
        default=None,
        metavar="SPEC",
        help="none | maxsim (late interaction over the bi-encoder) | cross-encoder:NAME|PATH (a bare hub id or "
        "directory is a cross-encoder too); default cross-encoder/ms-marco-MiniLM-L6-v2, falling back to maxsim "
        "when it cannot be loaded",
    )


def first_stage_spec(args: argparse.Namespace) -> str:
    """``--first-stage`` checked before any model loads (UsageError naming the flag)."""
    from twostage.retriever.fusion import FirstStage

    from .errors import UsageError

    try:
        return FirstStage.parse(args.first_stage).label
    except ValueError as err:
        raise UsageError(f"--first-stage: {err}") from None


def reranker_spec(args: argparse.Namespace) -> str | None:
    """``--no-rerank`` → None; ``--reranker X`` → X (explicit); nothing → the default cross-encoder."""
    from twostage.reranker.resolve import DEFAULT_RERANKER

    if args.no_rerank:
        return None
    return args.reranker or DEFAULT_RERANKER
