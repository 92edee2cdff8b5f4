"""The evaluation harness: run engine configurations (first stage bm25, dense or hybrid, reranked at several
depths or not) and a reranked given run over one dataset, score them with trec_eval semantics and test each against
a baseline.

Every system but a given run is `twostage.Engine.search_queries` over a collection built once per dataset and
bi-encoder (with stored MaxSim token vectors, and the collection's own lexical index) and reused afterwards: the
code `twostage search --queries Q --run OUT` runs. Reranking a given run alone needs no collection (its texts come
from the corpus) and goes through the engine's rerank step. See `eval.systems`.
"""

from __future__ import annotations

import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from twostage.errors import UsageError
from twostage.eval.collection import check_index_dir, default_index_dir, eval_runtime, open_collection
from twostage.eval.datasets import Dataset
from twostage.eval.errors import EvalInputError
from twostage.eval.metrics import DEFAULT_MEASURES, evaluate, parse_measure
from twostage.eval.significance import Comparison, compare
from twostage.eval.systems import (
    SystemRun,
    engine_system,
    rerank_run_system,
    rerank_texts_needed,
)
from twostage.eval.timing import StageTimings
from twostage.eval.trec import Run, read_run
from twostage.runtime.config import RuntimeConfig
from twostage.search_request import SearchRequest
from twostage.stages import DEFAULT_RERANKER

DEFAULT_DEPTHS = (10, 20, 50, 100)
FIRST_STAGE_DEPTH = 1000
#: default systems reranked at every depth (bm25+rerank@D runs when asked for by name)
RERANKED_BY_DEFAULT = ("dense", "hybrid", "run")
_SYSTEM_RE = re.compile(r"^(bm25|dense|hybrid|run)(?:\+rerank(?:@(\d+))?)?$")


@dataclass
class EvalConfig:
    """What to evaluate and how; every field has the documented default of `twostage eval`."""

    model: str | None = None  # bi-encoder; None = the default all-MiniLM-L6-v2
    reranker: Any = DEFAULT_RERANKER  # spec string, a Reranker, or None; the default falls back to MaxSim offline
    systems: Sequence[str] | None = None  # None = all that apply
    depths: Sequence[int] = DEFAULT_DEPTHS
    first_stage_depth: int = FIRST_STAGE_DEPTH
    rerank_run: str | Path | None = None
    rrf_k: float = 60.0
    baseline: str = "dense"
    index_dir: str | Path | None = None  # None = <cache>/collections/<dataset>-<hash>
    overwrite: bool = False  # replace whatever collection index_dir holds (never done without it)
    index_type: str = "auto"
    max_queries: int | None = None
    rel_threshold: int | None = None  # None = 2 for msmarco-dl* datasets, else 1
    measures: Sequence[str] = DEFAULT_MEASURES
    runtime: RuntimeConfig | None = None  # device, backend, batch size, threads; None = RuntimeConfig()
    batch_size: int | None = None  # shorthand overriding runtime.batch_size
    backend: str | None = None  # shorthand overriding runtime.backend (None = the device's default)
    n_resamples: int = 10000
    progress: bool = False
    encoder: Any = field(default=None, repr=False)  # an already loaded BiEncoder to reuse (tests)


@dataclass(frozen=True)
class SystemSpec:
    """One system: a first stage (bm25, dense, hybrid, run), reranked at `depth` unless it is None."""

    first_stage: str
    depth: int | None = None
    levers: str = ""  # "/"-separated Engine.search lever options, e.g. "prf=3:0.5/fusion=rrf" (eval.systems)

    @property
    def name(self) -> str:
        base = self.first_stage if self.depth is None else f"{self.first_stage}+rerank@{self.depth}"
        return f"{base}/{self.levers}" if self.levers else base


@dataclass
class SystemResult:
    """A system's run, mean and per-query scores, per-query stage timings and tests against the baseline."""

    name: str
    first_stage: str
    depth: int | None
    run: Run
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    timings: StageTimings | None
    vs_baseline: dict[str, Comparison] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Everything one evaluation produced; `eval.report` turns it into a table, JSON, runs, CSV and plots."""

    dataset: str
    dataset_source: str
    n_queries: int
    n_documents: int | None
    rel_threshold: int
    measures: list[str]
    depths: list[int]
    baseline: str
    systems: list[SystemResult]
    models: dict[str, Any]
    config: dict[str, Any]
    indexing: dict[str, Any]
    notices: list[str]
    versions: dict[str, str]
    elapsed_s: float
    created_at: str

    def system(self, name: str) -> SystemResult:
        """The result of system `name` (KeyError if it was not run)."""
        for result in self.systems:
            if result.name == name:
                return result
        raise KeyError(name)


def default_rel_threshold(dataset_name: str) -> int:
    """TREC DL convention: label >= 2 is relevant on msmarco-dl* datasets; label >= 1 elsewhere."""
    return 2 if dataset_name.lower().startswith("msmarco-dl") else 1


def resolve_systems(
    requested: Sequence[str] | None, depths: Sequence[int], *, have_run: bool, have_reranker: bool
) -> list[SystemSpec]:
    """Parse `--systems` names (bm25, dense, hybrid, run, dense+rerank@20, or dense+rerank for every depth);
    None gives every system that applies, in the table's order."""
    depths = sorted(set(int(d) for d in depths))
    if requested is None:
        stages = ["bm25", "dense", "hybrid"] + (["run"] if have_run else [])
        specs: list[SystemSpec] = [SystemSpec(s) for s in stages]
        if have_reranker:
            specs += [SystemSpec(s, d) for s in RERANKED_BY_DEFAULT if s != "run" or have_run for d in depths]
        return _table_order(specs)
    specs = []
    if not [name for name in requested if name.strip()]:
        raise EvalInputError(
            "--systems names no system; expected bm25, dense, hybrid or run, each alone or +rerank[@D]"
        )
    for name in requested:
        if not name.strip():
            continue
        name, _, levers = name.strip().lower().partition("/")
        if levers:
            if name.startswith("run"):
                raise EvalInputError(f"system {name}/{levers}: lever options apply to engine systems, not a given run")
            _check_levers(name, levers)
        match = _SYSTEM_RE.match(name)
        if not match:
            raise EvalInputError(
                f"unknown system {name!r}; expected bm25, dense, hybrid or run, each alone or +rerank[@D]"
            )
        stage, is_rerank = match.group(1), "+rerank" in name
        if stage == "run" and not have_run:
            raise EvalInputError(f"system {name!r} needs --rerank-run FILE")
        if is_rerank:
            if not have_reranker:
                raise EvalInputError(f"system {name!r} needs a reranker, but --no-rerank was given")
            specs += (
                [SystemSpec(stage, int(match.group(2)), levers)]
                if match.group(2)
                else [SystemSpec(stage, d, levers) for d in depths]
            )
        else:
            specs.append(SystemSpec(stage, levers=levers))
    for spec in specs:
        if spec.depth is not None and spec.depth < 1:
            raise EvalInputError(f"system {spec.name!r}: the rerank depth must be a positive integer")
    return _table_order(list(dict.fromkeys(specs)))


def _check_levers(name: str, levers: str) -> None:
    """A system's lever options, checked as the engine will take them (before any model loads)."""
    try:
        SearchRequest.from_system(f"{name}/{levers}", candidate_depth=FIRST_STAGE_DEPTH**2)
    except UsageError as err:
        raise EvalInputError(str(err)) from None


def check_config(config: EvalConfig) -> list[SystemSpec]:
    """Every check of `config` that needs neither the dataset nor a model (systems, depths, --rrf-k, baseline,
    --max-queries, -l); EvalInputError naming the option. Returns the systems to run, in the table's order."""
    depths = sorted(set(int(d) for d in config.depths))
    if not depths or depths[0] < 1:
        raise EvalInputError(f"rerank depths must be positive integers, got {list(config.depths)}")
    try:
        rrf_k = float(config.rrf_k)
    except (TypeError, ValueError):
        raise EvalInputError(f"--rrf-k must be a number >= 0, got {config.rrf_k!r}") from None
    if not (math.isfinite(rrf_k) and rrf_k >= 0):
        raise EvalInputError(f"--rrf-k must be a finite number >= 0, got {config.rrf_k:g}")
    if config.max_queries is not None and config.max_queries < 1:
        raise EvalInputError(f"--max-queries must be a positive integer, not {config.max_queries}")
    if config.rel_threshold is not None and config.rel_threshold < 1:
        raise EvalInputError(f"-l/--rel-threshold must be at least 1, not {config.rel_threshold}")
    for measure in config.measures:
        try:
            parse_measure(measure)
        except ValueError as err:
            raise EvalInputError(str(err)) from None
    specs = resolve_systems(
        config.systems, depths, have_run=config.rerank_run is not None, have_reranker=config.reranker is not None
    )
    if any(s.first_stage != "run" and s.depth and s.depth > config.first_stage_depth for s in specs):
        raise EvalInputError(f"a rerank depth exceeds the first-stage depth {config.first_stage_depth}")
    names = [s.name for s in specs]
    if config.baseline not in names and config.baseline != EvalConfig.baseline:
        raise EvalInputError(f"baseline {config.baseline!r} is not among the systems evaluated ({', '.join(names)})")
    return specs


def _table_order(specs: list[SystemSpec]) -> list[SystemSpec]:
    """bm25, bm25+rerank@d, dense, dense+rerank@d, hybrid, hybrid+rerank@d, run, run+rerank@d (d ascending)."""
    rank = {"bm25": 0, "dense": 1, "hybrid": 2, "run": 3}
    return sorted(specs, key=lambda s: (rank[s.first_stage], s.depth is not None, s.depth or 0, s.levers))


def _documents(dataset: Dataset, keep: set[str] | None = None) -> list:
    """The dataset's corpus (or its documents in `keep`) as `indexes.documents.Document`s (title None if absent)."""
    from twostage.indexes.documents import Document

    return [
        Document(d["id"], d["text"], d["title"] or None)
        for d in dataset.iter_corpus()
        if keep is None or d["id"] in keep
    ]


def _second_stage(engine: Any, encoder: Any, spec: Any, runtime: RuntimeConfig) -> tuple[Any, list[str]]:
    """The engine's reranker (loaded on first use), or, without a collection, the same `load_reranker` call;
    with the one-line notice of an offline fallback to MaxSim, if any."""
    if engine is not None:
        reranker = engine.reranker
        return reranker, list(engine.notices)
    from twostage.stages import second_stage

    return second_stage(spec, encoder, runtime)


def _versions() -> dict[str, str]:
    """Versions of Python, the platform and every library that changes a score or a timing."""
    import sqlite3
    from importlib import metadata

    out = {
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "load_average_1_5_15min": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for package in ("twostage", "torch", "transformers", "sentence-transformers", "faiss-cpu", "numpy", "scipy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        out["torch_threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return out


def _select_queries(dataset: Dataset, max_queries: int | None) -> list[str]:
    qids = list(dataset.queries)
    if max_queries is not None:
        if max_queries < 1:
            raise EvalInputError(f"--max-queries must be a positive integer, not {max_queries}")
        qids = qids[:max_queries]
    if not qids:
        raise EvalInputError(f"dataset {dataset.name} has no judged queries")
    return qids


def _given_run(path: str | Path, qids: list[str], notices: list[str]) -> Run:
    """The `--rerank-run` file, restricted to the evaluated queries (the others are noted, not an error)."""
    run = read_run(path, on_duplicate="max")
    extra = [q for q in run if q not in set(qids)]
    if extra:
        notices.append(f"{path}: {len(extra)} queries of the run are not evaluated and are ignored")
    missing = [q for q in qids if q not in run]
    if missing:
        notices.append(f"{path}: {len(missing)} evaluated queries have no results in the run (they score 0)")
    return {q: run.get(q, {}) for q in qids}


def run_evaluation(dataset: Dataset, config: EvalConfig, *, log: Callable[[str], None] | None = None) -> EvalReport:
    """Run every selected system on `dataset`, evaluate it, and test it against the baseline (see module doc)."""
    log = log or (lambda message: None)
    started = time.perf_counter()
    notices: list[str] = []
    specs = check_config(config)
    qids = _select_queries(dataset, config.max_queries)
    queries = {q: dataset.queries[q] for q in qids}
    qrels = {q: dataset.qrels[q] for q in qids}
    rel = config.rel_threshold if config.rel_threshold is not None else default_rel_threshold(dataset.name)
    measures = [str(parse_measure(m)) for m in config.measures]
    depths = sorted({s.depth for s in specs if s.depth is not None}) or sorted(set(int(d) for d in config.depths))
    stages = {s.first_stage for s in specs}
    need_collection = bool(stages - {"run"})
    need_reranker = any(s.depth for s in specs)
    given = _given_run(config.rerank_run, qids, notices) if "run" in stages and config.rerank_run is not None else None

    if need_collection:
        docs = _documents(dataset)
    elif given is not None and need_reranker:  # only the given run's candidates need their text
        docs = _documents(dataset, keep={d for qid in qids for d in given[qid]})
    else:
        docs = []
    if need_collection and config.index_dir and not config.overwrite:
        check_index_dir(Path(config.index_dir), docs)  # a collection other than this dataset's: refused, untouched
    models: dict[str, Any] = {}
    indexing: dict[str, Any] = {}
    engine = encoder = reranker = None
    if need_collection or need_reranker:
        from twostage.stages import bi_encoder

        # an existing collection is searched as Engine.open would: an int8 one with its own backend, a float one
        # with a float backend (an int8 choice becomes its float parent), so --index takes any of the same model
        existing = Path(config.index_dir) if need_collection and config.index_dir and not config.overwrite else None
        encoder = config.encoder or bi_encoder(config.model, eval_runtime(config), existing)
        models["bi_encoder"] = {
            "name": encoder.name,
            "source": str(encoder.source),
            "origin": encoder.origin,
            "fingerprint": encoder.fingerprint,
            "backend": encoder.backend_tag,
        }
    if need_collection:
        path = Path(config.index_dir) if config.index_dir else default_index_dir(dataset, encoder)
        log(f"collection: {path}")
        engine, indexing = open_collection(path, docs, encoder, config, log, owned=not config.index_dir)
    try:
        if need_reranker:
            reranker, reranker_notices = _second_stage(engine, encoder, config.reranker, eval_runtime(config))
            notices.extend(reranker_notices)
            for notice in reranker_notices:
                log(notice)
            models["reranker"] = {
                "spec": getattr(config.reranker, "name", config.reranker),
                "name": getattr(reranker, "name", None),
            }
        runs = _run_systems(specs, queries, docs, engine, reranker, given, config, log)
    finally:
        if engine is not None:
            engine.close()
    if stages & {"bm25", "hybrid"}:
        from twostage.indexes.lexical import RECORD, STOPWORDS

        models["bm25"] = {**RECORD, "k1": 1.2, "b": 0.75, "query_stopwords": len(STOPWORDS)}

    baseline = config.baseline
    names = [s.name for s in specs]
    if baseline not in names:
        if config.baseline != EvalConfig.baseline:
            raise EvalInputError(f"baseline {baseline!r} is not among the systems evaluated ({', '.join(names)})")
        notices.append(f"baseline {baseline!r} was not evaluated; comparing against {names[0]!r} instead")
        baseline = names[0]
    results = []
    for spec in specs:
        system = runs[spec.name]
        result = evaluate(system.run, qrels, measures, rel_threshold=rel, complete=True)
        results.append(
            SystemResult(
                spec.name, spec.first_stage, spec.depth, system.run, result.aggregate, result.per_query, system.timings
            )
        )
    base = next(r for r in results if r.name == baseline)
    for other in results:
        if other is not base:
            other.vs_baseline = {
                m: compare(base.per_query, other.per_query, m, n_resamples=config.n_resamples) for m in measures
            }
    config_record = {
        f.name: getattr(config, f.name) for f in fields(config) if f.name not in ("encoder", "batch_size", "backend")
    }
    config_record.update(runtime=asdict(eval_runtime(config)))  # the effective settings, shorthands applied
    config_record.update(
        reranker=getattr(config.reranker, "name", config.reranker),
        depths=depths,
        systems=names,
        rerank_run=None if config.rerank_run is None else str(config.rerank_run),
        index_dir=indexing.get("path"),
        measures=measures,
        rel_threshold=rel,
        baseline=baseline,
        significance={
            "measure_in_table": "nDCG@10",
            "tests": ["paired randomization (two-sided)", "paired t-test (two-sided)"],
            "n_resamples": config.n_resamples,
            "seed": 0,
        },
    )
    return EvalReport(
        dataset=dataset.name,
        dataset_source=dataset.source,
        n_queries=len(qids),
        n_documents=len(docs) if need_collection else None,
        rel_threshold=rel,
        measures=measures,
        depths=depths,
        baseline=baseline,
        systems=results,
        models=models,
        config=config_record,
        indexing=indexing,
        notices=notices,
        versions=_versions(),
        elapsed_s=time.perf_counter() - started,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _run_systems(
    specs: list[SystemSpec],
    queries: dict[str, str],
    docs: list,
    engine: Any,
    reranker: Any,
    given: Run | None,
    config: EvalConfig,
    log: Callable[[str], None],
) -> dict[str, SystemRun]:
    """The run (and timings) of every system in `specs`: each engine configuration through the engine, a given run
    as it is, and its reranked forms through the engine's rerank step."""
    out: dict[str, SystemRun] = {}
    for spec in specs:
        if spec.first_stage == "run":
            continue
        log(f"{spec.name}: searching through the engine")
        request = SearchRequest.from_system(spec.name, config.first_stage_depth, rrf_k=config.rrf_k)
        out[spec.name] = engine_system(engine, queries, request, progress=config.progress, label=spec.name)
    if given is not None:
        out["run"] = SystemRun(given, None)
        run_depths = [s.depth for s in specs if s.first_stage == "run" and s.depth]
        by_id = {doc.id: doc for doc in docs}
        missing = rerank_texts_needed(given, list(queries), max(run_depths, default=0)) - set(by_id)
        if missing:
            raise EvalInputError(
                f"{config.rerank_run}: {len(missing)} documents of the run are not in the dataset's "
                f"corpus (e.g. {sorted(missing)[:3]}); the reranker needs their text"
            )
        for depth in run_depths:
            log(f"run+rerank@{depth}: reranking the top {depth} of {config.rerank_run}")
            out[f"run+rerank@{depth}"] = rerank_run_system(
                reranker, queries, given, by_id, depth, progress=config.progress, label=f"run+rerank@{depth}"
            )
    return out
