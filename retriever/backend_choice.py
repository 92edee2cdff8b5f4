"""The bi-encoder's side of ``--backend auto``: how to load and probe it on one backend, and its measured choice."""

from __future__ import annotations

import os

import numpy as np

from twostage.runtime.autotune import Calibration, Probe, calibrate, read_choice
from twostage.runtime.calibration import PASSAGES, QUERIES
from twostage.runtime.models import model_fingerprint, resolve_model

STAGE = "bi-encoder"


def bi_encoder_probe(model: str, backend: str, *, batch_size: int = 32, threads: int | None = None) -> Probe:
    """The check (calibration queries against calibration passages, cosine) and the unit of work (encoding 26
    distinct documents of two passages each, about dl20's length, no embedding cache) for ``model`` on ``backend``."""
    from .biencoder import BiEncoder

    encoder = BiEncoder(model, backend=backend, batch_size=batch_size, threads=threads, cache=None)
    n = len(PASSAGES)
    documents = [f"{PASSAGES[i]} {PASSAGES[(i + 1) % n]}" for i in range(n)]

    def scores() -> list[np.ndarray]:
        passages = encoder.encode_documents(PASSAGES).embeddings
        return list(encoder.encode_queries(QUERIES) @ passages.T)

    return Probe(scores, lambda: len(encoder.encode_documents(documents).embeddings))


def fingerprint_of(model: str) -> str:
    """The fingerprint of ``model`` when its files are local (no model loaded), else "" (nothing to key a choice by)."""
    source = resolve_model(model, kind="bi-encoder").source
    return model_fingerprint(source) if os.path.isdir(source) else ""


def bi_encoder_choice(
    model: str, *, batch_size: int = 32, threads: int | None = None, recalibrate: bool = False
) -> Calibration | None:
    """The measured choice for ``model`` on this machine: cached, else measured now (and cached); None for a model
    with no local files."""
    fingerprint = fingerprint_of(model)
    if not fingerprint:
        return None
    found = None if recalibrate else read_choice(STAGE, fingerprint)
    return found or calibrate(
        STAGE, fingerprint, lambda backend: bi_encoder_probe(model, backend, batch_size=batch_size, threads=threads)
    )
