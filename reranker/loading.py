"""Turn the user's ``--reranker`` choice into a reranker, falling back to MaxSim only for the implicit default."""
from __future__ import annotations

from typing import Any

from .base import Reranker, RerankerLoadError
from .cross_encoder import DEFAULT_RERANKER, CrossEncoderReranker
from .maxsim import MaxSimReranker, TokenStore
from .resolve import OFFLINE


def load_reranker(
    spec: str | None,
    *,
    encoder: Any = None,
    explicit: bool,
    device: str = "cpu",
    batch_size: int = 32,
    max_length: int | None = None,
    token_store: TokenStore | None = None,
    backend: str | None = "torch",
) -> tuple[Reranker | None, str | None]:
    """``(reranker or None, one-line notice or None)`` for ``spec``: None/"none" (no second stage), "maxsim", or a
    cross-encoder directory / hub id.

    ``backend`` runs a cross-encoder on torch, ONNX Runtime or OpenVINO (MaxSim follows the bi-encoder's backend).
    Only when ``spec`` is the default cross-encoder, the user did not ask for it (``explicit=False``) and it cannot be
    loaded, this falls back to MaxSim over ``encoder`` and says so in the notice; otherwise it raises RerankerLoadError.
    """
    if spec is None or spec.strip().lower() == "none":
        return None, None
    if spec.strip().lower() == "maxsim":
        if encoder is None:
            raise RerankerLoadError(
                "reranker: --reranker maxsim needs the collection's bi-encoder, and none was given",
                reason="no bi-encoder for maxsim",
            )
        return MaxSimReranker(encoder, token_store=token_store, batch_size=batch_size), None
    try:
        reranker = CrossEncoderReranker(spec, device=device, batch_size=batch_size, max_length=max_length, backend=backend)
        return reranker, None
    except RerankerLoadError as error:
        if explicit or spec != DEFAULT_RERANKER or encoder is None:
            raise
        why = "is not available offline" if error.reason == OFFLINE else f"cannot be loaded ({error.reason})"
        notice = (
            f"reranker: {spec} {why}; using late-interaction MaxSim over the bi-encoder instead "
            "(pass --reranker PATH to use a cross-encoder)"
        )
        return MaxSimReranker(encoder, token_store=token_store, batch_size=batch_size), notice
