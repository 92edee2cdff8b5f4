"""One absolute relevance score per hit: P(relevant), calibrated from the stage scores, the same scale for every
query and collection, so a program can threshold it (``min_score``). The fused value keeps deciding the order.

The probability is a logistic regression over ``maxsim_mean`` (the raw MaxSim score divided by the number of query
tokens it summed over: a mean best cosine, whatever the query's length) and ``cosine`` (the dense cosine of the query
with the passage), fitted by ``benchmarks/fit_relevance.py`` on one judged set and checked on others. Per-query
normalised scores (min-max, z-score, RRF) cannot be used: they put every query's top hit near 1.

Fits hold for one bi-encoder only (they live in ``relevance_fits/<model>.json``, matched by the model's weights
fingerprint): for another model, a cross-encoder reranker, or IDF-weighted query tokens there is no fit and the
relevance is None (``min_score`` is then refused with a message saying so).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from twostage.reranker.base import Reranker
from twostage.reranker.maxsim import MaxSimReranker

from .errors import UsageError

FEATURES = ("maxsim_mean", "cosine")
#: the fit for a search without a second stage (dense first stage: the cosine alone)
NO_RERANK = "none"


@dataclass(frozen=True)
class RelevanceFit:
    """P(relevant) = sigmoid(intercept + sum coef_i x feature_i) over the named features."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float

    def probability(self, rows: Any) -> np.ndarray:
        """P(relevant) per row of ``rows`` (columns in :data:`FEATURES` order; unused ones ignored)."""
        x = np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES))
        logit = self.intercept + x[:, [FEATURES.index(f) for f in self.features]] @ np.asarray(self.coef)
        return 1.0 / (1.0 + np.exp(-logit))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "coef": list(self.coef), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelevanceFit:
        features = tuple(data["features"])
        if not set(features) <= set(FEATURES) or len(data["coef"]) != len(features):
            raise ValueError(f"relevance fit: features {features} / coefficients {data['coef']} do not match")
        return cls(features, tuple(float(c) for c in data["coef"]), float(data["intercept"]))


@dataclass(frozen=True)
class RelevanceModel:
    """The fits for one bi-encoder: per MaxSim query-token setting ("plain", "special") and :data:`NO_RERANK`."""

    model: str
    fingerprint: str
    fits: dict[str, RelevanceFit]

    def fit_for(self, setting: str) -> RelevanceFit | None:
        return self.fits.get(setting)


@cache
def _shipped() -> tuple[RelevanceModel, ...]:
    models = []
    folder = resources.files("twostage").joinpath("relevance_fits")
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            fits = {name: RelevanceFit.from_dict(fit) for name, fit in data["fits"].items()}
            models.append(RelevanceModel(data["model"], data["fingerprint"], fits))
    return tuple(models)


def relevance_model(fingerprint: str) -> RelevanceModel | None:
    """The shipped fits for the bi-encoder with this weights fingerprint, or None (no calibrated score)."""
    return next((m for m in _shipped() if fingerprint and m.fingerprint == fingerprint), None)


def calibrated_models() -> list[str]:
    """The bi-encoders a relevance score exists for (for messages)."""
    return [m.model for m in _shipped()]


def relevance_scores(fit: RelevanceFit, maxsim_mean: Sequence[float], cosine: Any) -> list[float]:
    """P(relevant) per hit from its features, rounded to 4 places (more would be false precision)."""
    rows = np.column_stack([np.asarray(maxsim_mean, dtype=np.float64), np.asarray(cosine, dtype=np.float64)])
    return [round(float(p), 4) for p in fit.probability(rows)]


def expected_calibration_error(p: Sequence[float], y: Sequence[float], bins: int = 10) -> float:
    """Mean |predicted - observed rate| over ``bins`` equal-width probability bins, weighted by their sizes."""
    probs, labels = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if probs.size == 0:
        return 0.0
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += float(mask.sum()) * abs(float(probs[mask].mean()) - float(labels[mask].mean()))
    return total / probs.size


def relevance_fit(encoder: Any, reranker: Reranker | None, min_score: float | None) -> RelevanceFit | None:
    """The calibration that applies to a search: the bi-encoder's fit for MaxSim with its query-token setting, or for
    no second stage; None where there is none, and then a ``min_score`` is refused, since nothing could pass it."""
    inner = getattr(reranker, "inner", reranker)
    model = relevance_model(encoder.fingerprint)
    fit = None
    if model is not None and inner is None:
        fit = model.fit_for(NO_RERANK)
    elif model is not None and isinstance(inner, MaxSimReranker) and inner.query_tokens.weighting is None:
        fit = model.fit_for("special" if inner.query_tokens.special else "plain")
    if fit is None and min_score is not None:
        why = f"the bi-encoder {encoder.name} has none" if model is None else "this reranker has none"
        raise UsageError(
            f"min_score needs a calibrated relevance score and {why}: it exists for "
            f"{', '.join(calibrated_models()) or 'no model'} with the maxsim reranker (plain or special query "
            f"tokens) or no reranker"
        )
    return fit


def score_relevance(
    fit: RelevanceFit,
    engine: Any,
    queries: list[str],
    vectors: Any,
    reranker: Reranker | None,
    hit_lists: Sequence[list[Any]],
    top_k: int,
) -> float:
    """Each of the top ``top_k`` hits' ``relevance`` from its stage scores (``engine``'s encoder and collection);
    returns the seconds spent encoding queries (a BM25 first stage encoded none)."""
    started = time.perf_counter()
    if vectors is None and "cosine" in fit.features:
        vectors = engine.encoder.encode_queries(queries)
    inner: Any = getattr(reranker, "inner", reranker)
    counts = inner.query_token_counts(queries) if "maxsim_mean" in fit.features else [1] * len(queries)
    for hits, vector, count in zip(hit_lists, vectors if vectors is not None else [None] * len(queries), counts):
        shown = [h for h in hits[:top_k] if reranker is None or h.second_stage_score is not None]
        if not shown:
            continue
        keys = [h.passage.key if getattr(h, "passage", None) else h.doc_id for h in shown]
        cosine = (
            engine.collection.embeddings_of(keys) @ np.asarray(vector, dtype=np.float32)
            if vector is not None
            else np.zeros(len(shown))
        )
        maxsim = [(h.second_stage_score or 0.0) / max(count, 1) for h in shown]
        for hit, p in zip(shown, relevance_scores(fit, maxsim, cosine)):
            hit.relevance = p
    return time.perf_counter() - started
