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


def first_run_notice(model: str, device: str = "cpu") -> str | None:
    """What ``--backend auto`` is about to do for ``model`` when it has not run here before (no measured choice,
    no export yet): the backend it takes and the export it builds; None once that is done, or for a hub model."""
    from twostage.runtime.autotune import read_choice
    from twostage.runtime.backends import PREFERENCE, default_backend
    from twostage.runtime.export import _complete, model_file

    fingerprint = fingerprint_of(model)
    if not fingerprint:
        return None
    found = read_choice(STAGE, fingerprint)
    backend = found.choice if found else default_backend(device)
    target = model_file(fingerprint, backend, "feature-extraction")
    if backend == "torch" or _complete(target.with_suffix(".json"), target):
        return None
    how = "measured here" if found else f"the first installed of {', '.join(PREFERENCE)}, not measured"
    return (
        f"--backend auto: {backend} ({how}; 'twostage info --backends --calibrate' measures this machine's "
        f"fastest); exporting the model for it once, in a child process (seconds) ..."
    )
