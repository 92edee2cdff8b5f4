"""Second stage of twostage: rerank first-stage candidates with a cross-encoder, or with MaxSim over the bi-encoder.

Imported on first use, so that catching ``RerankerLoadError`` (the CLI's error path) does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Candidate": ".base",
    "Reranked": ".base",
    "Reranker": ".base",
    "RerankerLoadError": ".base",
    "CrossEncoderReranker": ".cross_encoder",
    "DEFAULT_RERANKER": ".resolve",
    "load_reranker": ".loading",
    "register_reranker": ".loading",
    "MaxSimReranker": ".maxsim",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'twostage.reranker' has no attribute {name!r}")
