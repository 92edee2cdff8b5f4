"""Reranking on Ray: copies of a cross-encoder in replica actors, and the engine that uses them."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage.engine import Engine
from twostage.reranker.base import Candidate, CandidateLike, Reranker
from twostage.runtime.config import RuntimeConfig

from .cluster import connect


class RerankerReplica:
    """One copy of a cross-encoder in a Ray actor."""

    def __init__(self, spec: str, model: str | None, runtime: RuntimeConfig, backend: str | None):
        from twostage.reranker.loading import load_reranker
        from twostage.retriever.biencoder import BiEncoder

        device, cross_backend = runtime.placement()
        encoder = (
            BiEncoder(model, device=device, batch_size=runtime.batch_size, backend=backend, threads=runtime.threads)
            if model
            else None
        )
        self.reranker, self.notice = load_reranker(
            spec,
            encoder=encoder,
            device=device,
            batch_size=runtime.batch_size,
            backend=cross_backend,
            threads=runtime.threads,
        )

    def describe(self) -> str:
        assert self.reranker is not None
        return self.reranker.name

    def score(self, queries: list[str], candidates: list[list[CandidateLike]]) -> list[np.ndarray]:
        assert self.reranker is not None  # a replica is started for a cross-encoder spec, never "none"
        return self.reranker.score_candidates(queries, candidates)


class RerankerPool(Reranker):
    """A :class:`Reranker` whose scoring runs on ``replicas`` Ray actors, one request each in turn."""

    def __init__(self, replicas: list[Any], name: str, ray: Any):
        self._ray = ray
        self._replicas = replicas
        self.name = name
        self._next = 0
        self._lock = threading.Lock()

    def _replica(self) -> Any:
        with self._lock:
            replica = self._replicas[self._next % len(self._replicas)]
            self._next += 1
        return replica

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        return self.score_candidates([query], [[Candidate(str(i), t) for i, t in enumerate(texts)]])[0]

    def score_candidates(
        self, queries: Sequence[str], candidates_per_query: Sequence[Sequence[CandidateLike]]
    ) -> list[np.ndarray]:
        return self._ray.get(self._replica().score.remote(list(queries), [list(c) for c in candidates_per_query]))


def open_ray_engine(
    directory: str | Path, *, address: str, reranker: str | None, replicas: int, runtime: RuntimeConfig | None
) -> Engine:
    """An engine over a Ray-served sharded collection. A cross-encoder reranks on ``replicas`` replica actors; MaxSim
    (named, or the offline fallback) runs in this process on the engine's own bi-encoder, since its only model work is
    the query and shipping 100 candidates' token vectors to a replica would cost more than scoring them here."""
    from twostage.reranker.loading import parse_spec

    engine = Engine.open(directory, reranker=reranker, runtime=runtime, ray=address)
    if reranker is None or parse_spec(reranker)[0] == "maxsim":
        return engine
    ray = connect(address)
    try:
        remote = ray.remote(num_cpus=0)(RerankerReplica)
        actors = [
            remote.remote(reranker, str(engine.encoder.source), runtime, engine.encoder.backend)
            for _ in range(max(1, replicas))
        ]
        name = ray.get(actors[0].describe.remote())
    except BaseException:
        engine.close()
        raise
    if name == "maxsim":  # the default cross-encoder fell back: score here, as for a named maxsim
        for actor in actors:
            ray.kill(actor)
        return engine
    engine.set_reranker(RerankerPool(actors, name, ray))
    return engine
