"""``twostage train``: mine candidates from a collection, label them (judgments and/or a teacher ranker), split by
query, train a cross-encoder or the bi-encoder, evaluate before and after, and write a report beside the model.

Steps, each resumable: the mined and teacher-scored lists are cached in ``OUT/data/``; training resumes from the
newest checkpoint in ``OUT/checkpoints/``; the best checkpoint by validation nDCG@10 is saved to ``OUT``; the report
is ``OUT/report.json`` and ``OUT/report.md``.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from twostage.errors import UsageError
from twostage.runtime.config import RuntimeConfig, resolve_device
from twostage.training.common import ScoredList, TrainOutcome, TrainSettings

from .data import TEACHER_REL_THRESHOLD, exclude_overlap, judged_lists, split_by_query, teacher_qrels, with_scores
from .mining import Log, combine_labels, load_teacher, mine, teacher_scores

DATA_VERSION = 1
#: ``(options, base model, output dir, untrained copy or None, log) -> test report`` on ``options.test_dataset``
TestEvaluation = Callable[["TrainOptions", str, Path, "Path | None", Log], dict[str, Any]]


@dataclass
class TrainOptions:
    """Everything ``twostage train reranker|retriever`` takes; defaults finish on a 2-core CPU in under an hour."""

    kind: str  # "reranker" or "retriever"
    out: Path
    collection: Path
    queries: str  # a qid<TAB>text file, or a dataset folder / name (its queries, and its qrels with --teacher none)
    base: str | None = None  # None: all-MiniLM-L6-v2 (the packaged bi-encoder)
    qrels: str | None = None
    teacher: str | None = "maxsim"  # "maxsim", a cross-encoder directory / id, or None (judgments only)
    exclude: list[str] = field(default_factory=list)  # datasets / query files never trained on (besides the test set)
    max_queries: int | None = 2000  # training queries used (after exclusion and before the split)
    val_queries: int = 50
    depth: int = 20  # dense candidates mined per query
    val_depth: int = 20  # candidates per validation query that the student reorders
    loss: str | None = None  # None: margin-mse (reranker) / mnrl (retriever)
    negatives: int = 3
    list_size: int = 8
    temperature: float = 1.0
    label_scale: float = 0.2  # bi-encoder margin-MSE: teacher (MaxSim) margins times this ~ cosine margins
    unjudged: str = "skip"
    max_length: int = 128
    settings: TrainSettings = field(default_factory=TrainSettings)
    test_dataset: str | None = None
    test_depths: tuple[int, ...] = (20, 50, 100)
    test_before: bool = True
    rel_threshold: int | None = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # how mining, the teacher and the test run


@dataclass
class PreparedData:
    """Training and validation lists plus where they came from."""

    train: list[ScoredList]
    val: list[ScoredList]
    val_qrels: dict[str, dict[str, int]]
    info: dict[str, Any]


# --------------------------------------------------------------------------- queries
def load_queries(spec: str) -> tuple[dict[str, str], dict[str, dict[str, int]], str]:
    """Queries (and qrels, if any) from a ``qid<TAB>text`` file or a dataset folder / name; plus a description."""
    from twostage.eval.datasets import load_dataset
    from twostage.eval.trec import read_queries_tsv

    path = Path(spec).expanduser()
    if path.is_file():
        return read_queries_tsv(path), {}, f"query file {path}"
    dataset = load_dataset(spec)
    return dict(dataset.queries), dict(dataset.qrels), dataset.source


def held_out_queries(specs: Sequence[str]) -> dict[str, str]:
    """All queries of the given datasets / query files: none of them may be trained on."""
    held: dict[str, str] = {}
    for spec in specs:
        held.update(load_queries(spec)[0])
    return held


def select_queries(opts: TrainOptions, log: Log) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, Any]]:
    """The training pool: the given queries minus any test query, cut to ``max_queries`` + ``val_queries``."""
    from twostage.eval.trec import read_qrels

    queries, dataset_qrels, source = load_queries(opts.queries)
    qrels = read_qrels(opts.qrels) if opts.qrels else (dataset_qrels if opts.teacher is None else {})
    held_specs = list(dict.fromkeys(([opts.test_dataset] if opts.test_dataset else []) + list(opts.exclude)))
    kept, dropped = exclude_overlap(queries, held_out_queries(held_specs))
    if dropped:
        log(f"excluded {len(dropped)} training queries that are also held-out queries of {', '.join(held_specs)}")
    if opts.teacher is None:
        kept = {q: t for q, t in kept.items() if q in qrels}
    if len(kept) < 2:
        raise UsageError(f"{opts.queries}: {len(kept)} usable training queries; need at least 2")
    train_ids, val_ids = split_by_query(list(kept), opts.val_queries, opts.settings.seed)
    if opts.max_queries is not None:
        train_ids = train_ids[: opts.max_queries]
    chosen = {q: kept[q] for q in val_ids + train_ids}
    info = {
        "queries_source": source,
        "queries_available": len(queries),
        "held_out": held_specs,
        "excluded_overlap": len(dropped),
        "train_query_ids": train_ids,
        "val_query_ids": val_ids,
    }
    return chosen, qrels, info


# --------------------------------------------------------------------------- cache of prepared lists
def _data_key(opts: TrainOptions, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": DATA_VERSION,
        "collection": str(Path(opts.collection).resolve()),
        "queries": opts.queries,
        "teacher": opts.teacher,
        "depth": opts.depth,
        "seed": opts.settings.seed,
        "train": info["train_query_ids"],
        "val": info["val_query_ids"],
    }


def _save_lists(
    path: Path, key: dict[str, Any], lists: Sequence[ScoredList], teacher: list[list[float]] | None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(key) + "\n")
        for i, item in enumerate(lists):
            handle.write(
                json.dumps(
                    {
                        "qid": item.qid,
                        "query": item.query,
                        "doc_ids": item.doc_ids,
                        "keys": item.keys,
                        "dense": item.scores,
                        "teacher": teacher[i] if teacher else None,
                    }
                )
                + "\n"
            )
    tmp.replace(path)


def _load_lists(
    path: Path, key: dict[str, Any], engine: Any
) -> tuple[list[ScoredList], list[list[float]] | None] | None:
    """Cached lists when they were made with the same settings (each candidate's passage text re-read from the
    collection by its stored key), else None."""
    from twostage.indexes.documents import encoding_text

    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        if json.loads(handle.readline()) != key:
            return None
        rows = [json.loads(line) for line in handle]
    lists, teacher = [], []
    for row in rows:
        keys = row.get("keys") or row["doc_ids"]
        stored = engine.collection.passages(keys)
        if any(key not in stored for key in keys):
            return None
        texts = [encoding_text(stored[key].text, stored[key].context) for key in keys]
        lists.append(ScoredList(row["qid"], row["query"], row["doc_ids"], texts, row["dense"], row.get("keys") or []))
        teacher.append(row["teacher"])
    return lists, (teacher if all(t is not None for t in teacher) else None)


def prepare_data(opts: TrainOptions, log: Log) -> PreparedData:
    """Select queries, mine candidates, label them, split by query (cached in ``OUT/data/lists.jsonl``)."""
    from twostage.engine import Engine

    started = time.monotonic()
    queries, qrels, info = select_queries(opts, log)
    key = _data_key(opts, info)
    cache = Path(opts.out) / "data" / "lists.jsonl"
    with Engine.open(opts.collection, reranker=None, runtime=opts.runtime) as engine:
        cached = _load_lists(cache, key, engine)
        if cached is not None:
            lists, teacher = cached
            log(f"reusing mined lists of {len(lists)} queries from {cache}")
        else:
            lists = mine(engine, queries, opts.depth, log, opts.settings.progress)
            teacher = None
            if opts.teacher is not None:
                model = load_teacher(opts.teacher, engine, lists, log, opts.settings.progress)
                log(f"teacher {opts.teacher}: scoring {sum(len(x.doc_ids) for x in lists)} candidates")
                teacher = teacher_scores(model, lists, opts.settings.progress)
                del model
            _save_lists(cache, key, lists, teacher)
        info["collection"] = {
            "path": str(opts.collection),
            "documents": len(engine.collection),
            "bi_encoder": engine.encoder.name,
        }
    by_qid = {item.qid: item for item in lists}
    train_ids = [q for q in info["train_query_ids"] if q in by_qid]
    val_ids = [q for q in info["val_query_ids"] if q in by_qid]
    if set(train_ids) & set(val_ids):
        raise AssertionError("a query is in both the training and the validation split")
    if teacher is not None:
        scored = with_scores(lists, teacher)
        scored = combine_labels(scored, qrels) if qrels else scored
        by_qid = {item.qid: item for item in scored}
        train = [by_qid[q] for q in train_ids]
        val = [_cut(by_qid[q], opts.val_depth) for q in val_ids]
        val_qrels = _val_qrels(val, qrels)
        labels = f"teacher {opts.teacher}" + (" + judgments" if qrels else "")
    else:
        train = judged_lists([by_qid[q] for q in train_ids], qrels, opts.unjudged)
        val = [_cut(by_qid[q], opts.val_depth) for q in val_ids]
        val_qrels = {q: qrels[q] for q in val_ids if q in qrels}
        labels = f"judgments (unjudged candidates: {opts.unjudged})"
    info.update(
        labels=labels,
        depth=opts.depth,
        val_depth=opts.val_depth,
        train_queries=len(train),
        val_queries=len(val),
        mined_candidates=sum(len(x.doc_ids) for x in lists),
        prepare_seconds=round(time.monotonic() - started, 1),
    )
    info["val_qrels"] = (
        "teacher's order (top1=3, 2-3=2, 4-5=1, rest 0)" if teacher is not None and not qrels else "judgments"
    )
    return PreparedData(train, val, val_qrels, info)


def _cut(item: ScoredList, depth: int) -> ScoredList:
    return item.subset(range(min(depth, len(item.doc_ids))))


def _val_qrels(val: Sequence[ScoredList], qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Judgments where a validation query has them, the teacher's graded order otherwise."""
    pseudo = teacher_qrels(val)
    return {item.qid: dict(qrels[item.qid]) if qrels.get(item.qid) else pseudo[item.qid] for item in val}


# --------------------------------------------------------------------------- training
def _rows(opts: TrainOptions, lists: Sequence[ScoredList], loss: str) -> dict[str, list[Any]]:
    from . import data as train_data

    seed = opts.settings.seed
    if loss == "margin-mse":
        rows = train_data.margin_rows(lists, opts.negatives, seed)
        if opts.kind == "retriever":
            rows["label"] = [[s * opts.label_scale for s in row] for row in rows["label"]]
        return rows
    if loss == "listwise-kl":
        return train_data.listwise_rows(lists, opts.list_size, opts.temperature, seed)
    if loss == "bce":
        if opts.teacher is not None:
            lists = [x.subset(range(len(x.doc_ids)), _top_binary(x.scores)) for x in lists]
        return train_data.pointwise_rows(lists, seed, negatives=opts.negatives)
    if loss == "mnrl":
        return train_data.contrastive_rows(lists, seed)
    raise UsageError(f"unknown loss {loss!r}")


def _top_binary(scores: Sequence[float]) -> list[float]:
    """Teacher scores as 0/1 labels: the teacher's top-1 is the positive."""
    best = max(range(len(scores)), key=lambda i: scores[i])
    return [1.0 if i == best else 0.0 for i in range(len(scores))]


def train(opts: TrainOptions, log: Log | None = None, *, evaluate_test: TestEvaluation | None = None) -> dict[str, Any]:
    """Run ``twostage train`` end to end and return the report (also written to ``OUT/report.json`` and ``.md``).

    With ``opts.test_dataset``, ``evaluate_test`` (``twostage train`` passes one that runs the eval harness) measures
    the result on it; training itself needs only the stages, the engine (mining) and eval's metrics."""
    from twostage.runtime.optional import require

    Dataset = require("datasets", "train", "twostage train").Dataset

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    if opts.kind not in ("reranker", "retriever"):
        raise UsageError(f"train what? 'reranker' or 'retriever', not {opts.kind!r}")
    started = time.monotonic()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    loss = opts.loss or ("margin-mse" if opts.kind == "reranker" else "mnrl")
    base = opts.base or _default_base()
    data = prepare_data(opts, log)
    rows = _rows(opts, data.train, loss)
    n_rows = len(next(iter(rows.values())))
    if n_rows == 0:
        raise UsageError("no training rows: every list was too short or had nothing to learn (see --depth)")
    dataset = Dataset.from_dict(rows)
    log(f"{n_rows} training rows ({loss}) from {len(data.train)} queries; {len(data.val)} validation queries")

    rel = opts.rel_threshold or (TEACHER_REL_THRESHOLD if data.info["val_qrels"] != "judgments" else 1)
    from transformers import set_seed

    set_seed(opts.settings.seed)  # the fresh head's initial weights, so runs with one seed start alike
    device = resolve_device(opts.runtime.device)  # the student trains in torch, whatever the inference backend
    if opts.kind == "reranker":
        from twostage.training.common import RankingEvaluator
        from twostage.training.cross_encoder import cross_encoder_scores, train_cross_encoder
        from twostage.training.cross_encoder import load_student as load_cross_encoder

        model = load_cross_encoder(base, max_length=opts.max_length, device=device)
        evaluator = RankingEvaluator(data.val, data.val_qrels, cross_encoder_scores, rel_threshold=rel)
        trainer_fn = train_cross_encoder
    else:
        from twostage.training.bi_encoder import bi_encoder_scores, load_student, train_bi_encoder
        from twostage.training.common import RankingEvaluator

        model = load_student(base, device=device)
        evaluator = RankingEvaluator(data.val, data.val_qrels, bi_encoder_scores, rel_threshold=rel)
        trainer_fn = train_bi_encoder

    before_dir = None
    if evaluate_test and opts.test_dataset and opts.test_before and opts.kind == "reranker":
        before_dir = Path(tempfile.mkdtemp(prefix="twostage-before-"))
        model.save_pretrained(str(before_dir))
    log("validation before training")
    val_before = evaluator.metrics(model)
    log(f"validation before: nDCG@10 {val_before['ndcg@10']:.4f}, MRR@10 {val_before['mrr@10']:.4f}")
    outcome = trainer_fn(model, dataset, loss, evaluator, out, opts.settings, log=log)
    log(
        f"trained {outcome.steps} steps in {outcome.seconds:.0f}s (stopped by {outcome.stopped_by}); "
        f"best validation nDCG@10 {outcome.best_metric} at step {outcome.best_step}"
    )
    val_after = _after(outcome, evaluator.name)

    test: dict[str, Any] = {}
    if evaluate_test and opts.test_dataset:
        try:
            test = evaluate_test(opts, base, out, before_dir, log)
        finally:
            if before_dir is not None:
                shutil.rmtree(before_dir, ignore_errors=True)
    report = _report(opts, base, loss, data, n_rows, outcome, val_before, val_after, test, time.monotonic() - started)
    write_report(out, report)
    log(f"model: {out}; report: {out / 'report.md'}")
    return report


def _default_base() -> str:
    from twostage.runtime.models import DEFAULT_BI_ENCODER

    return DEFAULT_BI_ENCODER


def _after(outcome: TrainOutcome, name: str) -> dict[str, float | None] | None:
    """Validation metrics of the kept (best) checkpoint, from the trainer's evaluation log."""
    key = f"eval_{name}_ndcg@10"
    for record in outcome.evaluations:
        if record.get("step") == outcome.best_step and key in record:
            return {"ndcg@10": record[key], "mrr@10": record.get(f"eval_{name}_mrr@10")}
    return None


# --------------------------------------------------------------------------- report
def _report(
    opts: TrainOptions,
    base: str,
    loss: str,
    data: PreparedData,
    n_rows: int,
    outcome: TrainOutcome,
    before: dict[str, float],
    after: dict[str, float | None] | None,
    test: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    info = {k: v for k, v in data.info.items() if k not in ("train_query_ids", "val_query_ids")}
    settings = asdict(opts.settings)
    return {
        "kind": opts.kind,
        "model_dir": str(opts.out),
        "base": base,
        "loss": loss,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {
            **info,
            "rows": n_rows,
            "teacher": opts.teacher,
            "negatives": opts.negatives,
            "list_size": opts.list_size,
            "temperature": opts.temperature,
            "max_length": opts.max_length,
        },
        "settings": settings,
        "training": {
            "steps": outcome.steps,
            "seconds": round(outcome.seconds, 1),
            "stopped_by": outcome.stopped_by,
            "resumed_from": outcome.resumed_from,
            "best_step": outcome.best_step,
            "first_loss": outcome.losses[0][1] if outcome.losses else None,
            "last_loss": outcome.losses[-1][1] if outcome.losses else None,
            "evaluations": outcome.evaluations,
        },
        "validation": {"before": before, "after": after},
        "test": test,
        "total_seconds": round(seconds, 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def write_report(out: Path, report: dict[str, Any]) -> None:
    """``report.json`` and a readable ``report.md`` beside the model."""
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_report(report), encoding="utf-8")


def render_report(report: dict[str, Any]) -> str:
    """The report as Markdown: data, recipe, steps and time, validation and test metrics before and after."""
    data, training = report["data"], report["training"]
    s = report["settings"]
    lines = [
        f"# twostage train {report['kind']}: {report['model_dir']}",
        "",
        f"- base: `{report['base']}`; loss: {report['loss']}; labels: {data['labels']}",
        f"- queries: {data['train_queries']} train / {data['val_queries']} validation (split by query) from "
        f"{data['queries_source']}; held out: {', '.join(data['held_out']) or 'none'} "
        f"({data['excluded_overlap']} overlapping queries excluded)",
        f"- candidates: dense top {data['depth']} from {data['collection']['path']} "
        f"({data['collection']['documents']} documents); {data['rows']} training rows",
        f"- optimiser: lr {s['learning_rate']} (head {s['head_learning_rate']}), warmup {s['warmup_ratio']}, "
        f"batch {s['batch_size']}, seed {s['seed']}",
        f"- training: {training['steps']} steps in {training['seconds']:.0f} s (stopped by {training['stopped_by']}"
        f"{', resumed from ' + training['resumed_from'] if training['resumed_from'] else ''}); "
        f"loss {_fmt(training['first_loss'])} → {_fmt(training['last_loss'])}; best step {training['best_step']}",
        f"- total time: {report['total_seconds']:.0f} s",
        "",
        f"## Validation ({data['val_queries']} queries, top {data['val_depth']}, qrels: {data['val_qrels']})",
        "",
        "| | nDCG@10 | MRR@10 |",
        "|---|---|---|",
    ]
    for name in ("before", "after"):
        values = report["validation"].get(name) or {}
        lines.append(f"| {name} | {_fmt(values.get('ndcg@10'))} | {_fmt(values.get('mrr@10'))} |")
    test = report.get("test") or {}
    if test:
        lines += [
            "",
            f"## Test: {test['dataset']} ({test['queries']} held-out queries)",
            "",
            "| system | model | nDCG@10 | MRR@10 |",
            "|---|---|---|---|",
        ]
        for which in ("before", "after"):
            for system, values in (test.get(which) or {}).items():
                lines.append(f"| {system} | {which} | {_fmt(values.get('nDCG@10'))} | {_fmt(values.get('MRR@10'))} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def parse_duration(text: str | None) -> float | None:
    """ "90", "90s", "45m", "1.5h" → seconds; None stays None."""
    if text is None:
        return None
    value = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if value and value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise UsageError(f"--time-budget {text!r}: expected seconds or a number with s, m or h") from None
