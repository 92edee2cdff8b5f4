"""``--backend auto``: each stage's backend chosen on this machine by measurement, once per CPU and model, and cached.

Every installed backend of a stage is loaded and run on built-in texts. A quality gate keeps only backends that rank
like torch (nDCG@10 within :data:`GATE` of torch's, torch's own top 10 being the graded relevance, so torch scores
1.0); of those, the one with the highest throughput (documents/s for the bi-encoder, pairs/s for the cross-encoder)
is chosen. The choice is a small JSON file under ``<cache root>/backends/``, keyed by the CPU model, its ISA flags,
the thread count, the model fingerprint and the installed runtimes' versions; reading it imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from time import gmtime, perf_counter, strftime
from typing import Any

import numpy as np

from twostage.runtime.backends import (
    BACKENDS,
    configure_threads,
    default_backend,
    missing_dependencies,
    resolve_backend,
)
from twostage.runtime.config import cache_root
from twostage.runtime.cpu import cpu_info

STAGES = ("bi-encoder", "cross-encoder")
#: how far below torch's nDCG@10 (1.0 by construction) a backend may score and still be eligible
GATE = 0.005
#: bump when what is measured changes, so older cached choices are measured again
FORMAT = 3
#: seconds of throughput measuring per stage (at least ``rounds`` rounds are run whatever it says)
BUDGET_S = 5.0
#: packages whose versions change what a backend computes or how fast
VERSIONED = ("torch", "transformers", "sentence-transformers", "onnxruntime", "openvino", "nncf")


@dataclass
class Probe:
    """One stage loaded on one backend: ``scores()`` gives one score array per check query (higher = better);
    ``work()`` runs one timed unit of throughput work and returns how many items (documents, pairs) it did."""

    scores: Callable[[], Sequence[np.ndarray]]
    work: Callable[[], int]


@dataclass
class Measurement:
    """One backend's result: the quality gate (nDCG@10 against torch), throughput, or why it could not run."""

    backend: str
    passed: bool
    ndcg: float | None = None
    per_second: float | None = None
    load_seconds: float = 0.0
    error: str | None = None


@dataclass
class Calibration:
    """A stage's measured choice, as cached: the table behind it and how long measuring and loading took."""

    stage: str
    choice: str
    measurements: list[Measurement]
    key: dict[str, Any]
    measure_seconds: float
    load_seconds: float
    measured_at: str
    path: Path = field(default=Path(), compare=False)


def measured(requested: str | None, device: str) -> bool:
    """True when ``requested`` asks for the measured choice: auto (or None) on the CPU, no ``$TWOSTAGE_BACKEND``."""
    env = (os.environ.get("TWOSTAGE_BACKEND") or "").strip().lower()
    return requested in (None, "auto") and str(device).startswith("cpu") and env in ("", "auto")


def cache_key(stage: str, fingerprint: str) -> dict[str, Any]:
    """What a cached choice is valid for: stage, model, CPU model and ISA flags, threads, runtime versions."""
    cpu = cpu_info()
    versions: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "format": FORMAT,
        "stage": stage,
        "fingerprint": fingerprint,
        "cpu": cpu.model,
        "isa": list(cpu.isa),
        "threads": configure_threads(),
        "versions": versions,
    }


def cache_path(key: dict[str, Any]) -> Path:
    """``<cache root>/backends/<stage>-<digest of the key>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root() / "backends" / f"{key['stage']}-{digest}.json"


def read_choice(stage: str, fingerprint: str) -> Calibration | None:
    """The cached calibration for this machine and model, or None (absent, unreadable, stale, or its backend is no
    longer installed)."""
    key = cache_key(stage, fingerprint)
    path = cache_path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found = Calibration(**{**data, "measurements": [Measurement(**m) for m in data["measurements"]], "path": path})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if found.key != key or found.choice not in BACKENDS or missing_dependencies(found.choice):
        return None
    return found


def stage_backend(requested: str | None, device: str, stage: str, fingerprint: str) -> str:
    """The backend a stage runs on: for auto on the CPU the cached measured choice, else (nothing cached, or no
    fingerprint) the default preference; anything else as :func:`runtime.backends.resolve_backend` decides."""
    if not measured(requested, device) or not fingerprint:
        return resolve_backend(requested, device)
    found = read_choice(stage, fingerprint)
    return found.choice if found else default_backend(device)


def calibrate(
    stage: str, fingerprint: str, load: Callable[[str], Probe], *, budget_s: float | None = None, rounds: int = 2
) -> Calibration:
    """Measure every installed backend of ``stage`` (``load(backend)`` opens one; exports are built there), choose,
    and cache the choice. Throughput units run in rotating order, round after round, until ``budget_s`` of measuring
    have passed (default :data:`BUDGET_S`; at least ``rounds``); a backend's rate is its best unit, so load from other
    processes counts least."""
    names = [b for b in BACKENDS if not missing_dependencies(b)]
    names = ["torch", *(b for b in names if b != "torch")]
    results = {b: Measurement(b, passed=False) for b in names}
    probes: dict[str, Probe] = {}
    reference: list[np.ndarray] = []
    measure_s = 0.0
    for backend in names:
        started = perf_counter()
        try:
            probe = load(backend)
            results[backend].load_seconds = perf_counter() - started
            started = perf_counter()
            scores = [np.asarray(s, dtype=np.float64) for s in probe.scores()]
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run here is simply not eligible
            if backend == "torch":
                raise
            results[backend].error = (f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0])[:200]
            continue
        measure_s += perf_counter() - started
        reference = reference or scores
        results[backend].ndcg = ndcg = ndcg_against(reference, scores)
        results[backend].passed = ndcg >= 1.0 - GATE
        if results[backend].passed:
            probes[backend] = probe
    best, elapsed = _throughput(probes, BUDGET_S if budget_s is None else budget_s, rounds)
    measure_s += elapsed
    for backend, (seconds, items) in best.items():
        results[backend].per_second = items / seconds if seconds > 0 else None
    eligible = [m for m in results.values() if m.passed and m.per_second]
    choice = max(eligible, key=lambda m: m.per_second or 0.0).backend if eligible else "torch"
    key = cache_key(stage, fingerprint)
    calibration = Calibration(
        stage,
        choice,
        list(results.values()),
        key,
        round(measure_s, 2),
        round(sum(m.load_seconds for m in results.values()), 2),
        strftime("%Y-%m-%d %H:%M UTC", gmtime()),
        cache_path(key),
    )
    _write(calibration)
    return calibration


def _throughput(probes: dict[str, Probe], budget_s: float, rounds: int) -> tuple[dict[str, tuple[float, int]], float]:
    """Per backend, its fastest unit (seconds, items), and the seconds it all took; the check before it was every
    backend's warm-up (first-call compilation, OpenVINO's throughput pipeline)."""
    names = list(probes)
    started = perf_counter()
    best: dict[str, tuple[float, int]] = {}
    done = 0
    while done < rounds or perf_counter() - started < budget_s:
        for name in names[done % len(names) :] + names[: done % len(names)]:
            t0 = perf_counter()
            items = probes[name].work()
            seconds = perf_counter() - t0
            if name not in best or seconds / max(items, 1) < best[name][0] / max(best[name][1], 1):
                best[name] = (seconds, items)
        done += 1
    return best, perf_counter() - started


def ndcg_against(reference: Sequence[np.ndarray], scores: Sequence[np.ndarray], depth: int = 10) -> float:
    """Mean nDCG@``depth`` of ``scores``' rankings, with ``reference``'s top ``depth`` as graded relevance (``depth``
    for its first, 1 for its last; the usual exponential gain, so the top counts most): the reference scores 1.0."""
    values = []
    for ref, got in zip(reference, scores):
        top = np.argsort(-ref, kind="stable")[:depth]
        gain = {int(doc): 2.0 ** (len(top) - rank) - 1.0 for rank, doc in enumerate(top)}
        discounts = [1.0 / math.log2(rank + 2) for rank in range(depth)]
        ideal = sum(g * d for g, d in zip(sorted(gain.values(), reverse=True), discounts))
        ranked = np.argsort(-np.asarray(got), kind="stable")[:depth]
        values.append(sum(gain.get(int(doc), 0.0) * d for doc, d in zip(ranked, discounts)) / ideal)
    return float(np.mean(values)) if values else 1.0


def _write(calibration: Calibration) -> None:
    """The calibration as JSON, replaced atomically; an unwritable cache only means measuring again next time."""
    path = calibration.path
    data = {k: v for k, v in asdict(calibration).items() if k != "path"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass


def describe(calibration: Calibration) -> list[str]:
    """The measured table of one stage, one line per backend, the choice marked: for ``twostage info --backends``."""
    unit = "documents/s" if calibration.stage == "bi-encoder" else "pairs/s"
    torch_rate = next((m.per_second for m in calibration.measurements if m.backend == "torch"), None)
    lines = [f"  {'backend':<14} {'gate':<4} {'nDCG@10':>8} {unit:>12} {'vs torch':>8}"]
    for m in calibration.measurements:
        ratio = f"{m.per_second / torch_rate:.2f}x" if m.per_second and torch_rate else "-"
        rate = f"{m.per_second:,.1f}" if m.per_second else "-"
        ndcg = f"{m.ndcg:.4f}" if m.ndcg is not None else "-"
        mark = "  <- chosen" if m.backend == calibration.choice else (f"  ({m.error})" if m.error else "")
        lines.append(f"  {m.backend:<14} {'yes' if m.passed else 'no':<4} {ndcg:>8} {rate:>12} {ratio:>8}{mark}")
    return lines
