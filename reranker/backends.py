"""Run a loaded ``CrossEncoder`` on a non-torch backend: the bi-encoder's export cache and runtimes, logits out.

Failures (a missing optional dependency, an export error) become ``RerankerLoadError`` with the same one-line message
the bi-encoder gives, naming the ``pip install "twostage[...]"`` extra.
"""

from __future__ import annotations

from typing import Any

from twostage.runtime.backends import Runtime, calibration_batches, exported_runtime, require, sample_inputs
from twostage.runtime.calibration import calibration_pairs
from twostage.runtime.models import ModelLoadError, model_fingerprint

from .base import RerankerLoadError


def cross_encoder_runtime(cross_encoder: Any, backend: str, max_length: int) -> Runtime | None:
    """The exported scorer for ``cross_encoder`` on ``backend`` (cached per model fingerprint); None for torch."""
    if backend == "torch":
        return None
    try:
        require(backend)
        tokenizer = cross_encoder.tokenizer
        return exported_runtime(
            cross_encoder.model,
            backend=backend,
            fingerprint=model_fingerprint(cross_encoder),
            task="sequence-classification",
            sample=sample_inputs(
                tokenizer, [("a query", "a short passage"), ("another query", "a passage")], max_length
            ),
            calibration=lambda: calibration_batches(tokenizer, calibration_pairs(), max_length),
        )
    except ModelLoadError as error:
        raise RerankerLoadError(f"reranker: {error}", reason=str(error)) from None
