"""Per-query, per-stage latencies (encode query, vector/lexical search, rerank) and their median and p95."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

STAGES = ("encode", "search", "rerank")


@dataclass
class StageTimings:
    """Seconds per query for each stage a system ran, all lists in the same query order."""

    stages: dict[str, list[float]] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        """Append one query's seconds for `stage`."""
        self.stages.setdefault(stage, []).append(float(seconds))

    def total(self) -> list[float]:
        """Per-query end-to-end seconds: the sum over stages."""
        lists = list(self.stages.values())
        return [float(sum(values)) for values in zip(*lists)] if lists else []

    def summary(self) -> dict[str, dict[str, float]]:
        """`{stage: {"median_ms", "p95_ms"}}` for every stage run, plus "total" (per-query sums)."""
        out = {stage: summarize(values) for stage, values in self.stages.items()}
        out["total"] = summarize(self.total())
        return out


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median and 95th percentile (linear interpolation, numpy's default) of `seconds`, in milliseconds."""
    if not seconds:
        return {"median_ms": float("nan"), "p95_ms": float("nan")}
    ms = np.asarray(seconds, dtype=float) * 1000.0
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}


def latency_ms(timings: StageTimings | None) -> tuple[float | None, float | None]:
    """Median and p95 end-to-end latency per query in ms, or (None, None) where it was not measured."""
    if timings is None or not timings.stages:
        return None, None
    total = timings.summary()["total"]
    return _finite(total["median_ms"]), _finite(total["p95_ms"])


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def combine(*parts: StageTimings) -> StageTimings:
    """Stage-wise per-query sums of several timings (e.g. a first stage plus its reranker)."""
    out = StageTimings()
    for part in parts:
        for stage, values in part.stages.items():
            if stage in out.stages:
                out.stages[stage] = [a + b for a, b in zip(out.stages[stage], values)]
            else:
                out.stages[stage] = list(values)
    return out
