"""The cross-encoder's side of ``--backend auto``: how to load and probe it on one backend, and its measured choice."""

from __future__ import annotations

import os

from twostage.runtime.autotune import Calibration, Probe, calibrate, read_choice
from twostage.runtime.calibration import PASSAGES, QUERIES
from twostage.runtime.models import model_fingerprint

from .resolve import load_cross_encoder, locate_cross_encoder

STAGE = "cross-encoder"
#: candidates per check query: its own passage and the next ones in the built-in list
CANDIDATES = 10
#: check queries (each scores CANDIDATES pairs)
CHECK_QUERIES = 8


def candidate_lists() -> list[tuple[str, list[str]]]:
    """(query, candidates) for the check: each of the first CHECK_QUERIES built-in queries with its own passage and
    the CANDIDATES - 1 passages after it, as a reranker sees a first stage's top list."""
    n = len(PASSAGES)
    return [(q, [PASSAGES[(i + j) % n] for j in range(CANDIDATES)]) for i, q in enumerate(QUERIES[:CHECK_QUERIES])]


def cross_encoder_probe(model: str, backend: str, *, batch_size: int = 32, threads: int | None = None) -> Probe:
    """The check (each candidate list scored) and the unit of work (four lists as one batch) on ``backend``."""
    from .cross_encoder import CrossEncoderReranker

    reranker = CrossEncoderReranker(model, backend=backend, batch_size=batch_size, threads=threads)
    lists = candidate_lists()
    queries, candidates = [q for q, _ in lists], [c for _, c in lists]

    def work() -> int:
        return sum(len(s) for s in reranker.score_batch(queries[:4], candidates[:4]))

    return Probe(lambda: reranker.score_batch(queries, candidates), work)


def cross_encoder_choice(
    model: str, *, batch_size: int = 32, threads: int | None = None, recalibrate: bool = False
) -> Calibration:
    """The measured choice for cross-encoder ``model`` on this machine: cached, else measured now (and cached)."""
    source = locate_cross_encoder(model).source  # a model that cannot be found fails here, in one line
    fingerprint = model_fingerprint(source if os.path.isdir(source) else load_cross_encoder(model))
    found = None if recalibrate else read_choice(STAGE, fingerprint)
    return found or calibrate(
        STAGE, fingerprint, lambda backend: cross_encoder_probe(model, backend, batch_size=batch_size, threads=threads)
    )
