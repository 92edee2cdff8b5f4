"""The two stages as the engine loads them, for what drives the engine (eval, training) and must not import a stage
itself: a bi-encoder placed by the engine's rules, a reranker by spec, and the candidate form rerankers read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twostage.indexes.sharded import collection_exists, read_manifest
from twostage.reranker.base import Candidate, Reranker
from twostage.reranker.loading import load_reranker
from twostage.reranker.maxsim import MaxSimReranker, mapping_lookup
from twostage.reranker.resolve import DEFAULT_RERANKER
from twostage.retriever.biencoder import BiEncoder
from twostage.runtime.config import RuntimeConfig
from twostage.runtime.models import DEFAULT_BI_ENCODER

from .placement import query_placement

__all__ = [
    "DEFAULT_BI_ENCODER",
    "DEFAULT_RERANKER",
    "Candidate",
    "bi_encoder",
    "maxsim",
    "mapping_lookup",
    "second_stage",
]


def bi_encoder(model: str | None, runtime: RuntimeConfig, collection: str | Path | None = None) -> BiEncoder:
    """The bi-encoder ``model`` (None: the default) where ``runtime`` puts it; for an existing ``collection`` as
    ``Engine.open`` would place it (an int8 collection with its own backend, a float one with a float backend)."""
    device, backend = runtime.placement()[0], runtime.backend  # auto stays auto: the stage reads the measured choice
    if collection is not None and collection_exists(collection):
        device, backend = query_placement(read_manifest(collection), runtime, collection)
    return BiEncoder(
        model or DEFAULT_BI_ENCODER,
        device=device,
        batch_size=runtime.batch_size,
        backend=backend,
        threads=runtime.threads,
    )


def second_stage(
    spec: Any, encoder: Any, runtime: RuntimeConfig, *, explicit: bool | None = None
) -> tuple[Reranker | None, list[str]]:
    """The reranker ``spec`` names (a spec string, a Reranker as it is, or None) without a collection, placed by
    ``runtime``; with the one-line notice of an offline fallback to MaxSim, if any."""
    if spec is None or isinstance(spec, Reranker):
        return spec, []
    device, _ = runtime.placement()
    reranker, notice = load_reranker(
        spec,
        encoder=encoder,
        explicit=explicit,
        device=device,
        batch_size=runtime.batch_size,
        backend=runtime.backend,
        threads=runtime.threads,
    )
    return reranker, [notice] if notice else []


def maxsim(encoder: Any, token_store: Any = None, batch_size: int = 32) -> MaxSimReranker:
    """Late interaction over ``encoder`` (the engine's bi-encoder), reading passages' token vectors from
    ``token_store`` (doc ids -> arrays; ``mapping_lookup`` makes one of a dict) where it has them."""
    return MaxSimReranker(encoder, token_store=token_store, batch_size=batch_size)
