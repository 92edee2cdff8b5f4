"""Trainer plumbing both trainers share: the ranked lists a trainer learns and is validated on, the settings and
outcome of a run, the validation evaluator (nDCG@10 with trec_eval semantics), the time-budget and loss-log callbacks,
and one ``fit`` that builds the trainer, keeps the best checkpoint, resumes after an interruption and honours
``max_steps`` and a time budget."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PRIMARY_METRIC = "ndcg@10"


@dataclass
class ScoredList:
    """One query's candidates (first-stage order) with a relevance score each: teacher scores or judged labels.
    ``keys`` name each candidate's stored passage (a long document's passage that matched; empty: the doc ids), which
    MaxSim's stored tokens and the cached lists' texts are read by; judgments go by ``doc_ids``."""

    qid: str
    query: str
    doc_ids: list[str]
    texts: list[str]
    scores: list[float]
    keys: list[str] = field(default_factory=list)

    @property
    def passage_keys(self) -> list[str]:
        """Each candidate's stored passage key (its doc id when it is a one-passage document)."""
        return self.keys or self.doc_ids

    def subset(self, indexes: Sequence[int], scores: Sequence[float] | None = None) -> ScoredList:
        """The candidates at ``indexes``, in that order, with ``scores`` (default: theirs)."""
        return ScoredList(
            self.qid,
            self.query,
            [self.doc_ids[i] for i in indexes],
            [self.texts[i] for i in indexes],
            list(scores) if scores is not None else [self.scores[i] for i in indexes],
            [self.keys[i] for i in indexes] if self.keys else [],
        )


@dataclass
class TrainSettings:
    """Optimiser, schedule and stopping rules shared by the cross-encoder and bi-encoder trainers."""

    learning_rate: float = 1e-4
    head_learning_rate: float | None = 2e-3  # the fresh head (and [CLS] pooler) learn faster than the body
    warmup_ratio: float = 0.1
    batch_size: int = 16
    epochs: float = 1.0
    max_steps: int | None = None
    time_budget_s: float | None = 2400.0
    eval_steps: int = 40
    logging_steps: int = 10
    save_total_limit: int = 2
    seed: int = 12
    resume: bool = True
    progress: bool = True


@dataclass
class TrainOutcome:
    """What one training run did: steps, seconds, why it stopped, the best validation step and the loss curve."""

    steps: int
    seconds: float
    stopped_by: str  # "schedule", "max_steps" or "time_budget"
    resumed_from: str | None
    best_step: int | None
    best_metric: float | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- validation
class RankingEvaluator:
    """nDCG@10 / MRR@10 of a model's ordering of fixed candidate lists against graded qrels (trec_eval semantics).

    ``score_fn(model, query, texts)`` scores one list; the trainers pass the cross-encoder's or bi-encoder's scorer.
    """

    def __init__(
        self,
        lists: Sequence[ScoredList],
        qrels: dict[str, dict[str, int]],
        score_fn: Callable[[Any, str, list[str]], np.ndarray],
        *,
        name: str = "val",
        rel_threshold: int = 1,
    ):
        from sentence_transformers.base.evaluation import BaseEvaluator

        self._base = BaseEvaluator  # subclass check happens in the trainer; see as_st_evaluator
        self.lists = list(lists)
        self.qrels = qrels
        self.score_fn = score_fn
        self.name = name
        self.rel_threshold = rel_threshold

    def run(self, model: Any) -> dict[str, dict[str, float]]:
        """The model's scores for every validation list, as a TREC run."""
        return {
            item.qid: dict(zip(item.doc_ids, map(float, self.score_fn(model, item.query, item.texts))))
            for item in self.lists
        }

    def metrics(self, model: Any) -> dict[str, float]:
        """``{"ndcg@10", "mrr@10"}`` of ``model`` on the validation lists."""
        from twostage.eval.metrics import evaluate

        result = evaluate(self.run(model), self.qrels, ("nDCG@10", "MRR@10"), rel_threshold=self.rel_threshold)
        return {"ndcg@10": result.aggregate["nDCG@10"], "mrr@10": result.aggregate["MRR@10"]}

    def as_st_evaluator(self) -> Any:
        """This evaluator as a sentence-transformers ``BaseEvaluator`` (primary metric ``<name>_ndcg@10``)."""
        outer = self

        base: Any = self._base

        class _Evaluator(base):
            def __init__(self) -> None:
                super().__init__()
                self.name = outer.name
                self.primary_metric = PRIMARY_METRIC

            def __call__(
                self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
            ) -> dict[str, float]:
                was_training = model.training
                model.eval()
                try:
                    values = outer.metrics(model)
                finally:
                    model.train(was_training)
                return self.prefix_name_to_metrics(values, self.name)

        return _Evaluator()


# --------------------------------------------------------------------------- callbacks
def trainer_callbacks() -> tuple[type, type]:
    """The two TrainerCallbacks (built lazily so importing this module does not import transformers)."""
    from transformers import TrainerCallback

    class TimeBudgetCallback(TrainerCallback):
        """Stop after ``budget_s`` seconds of training in this process, evaluating and saving the last step."""

        def __init__(self, budget_s: float | None):
            self.budget_s = budget_s
            self.started = time.monotonic()
            self.fired = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if self.budget_s is not None and time.monotonic() - self.started >= self.budget_s:
                self.fired = True
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True
            return control

    class LossLogCallback(TrainerCallback):
        """Append every logged loss and evaluation to ``path`` (JSON lines) and, optionally, a log function."""

        def __init__(self, path: Path, log: Callable[[str], None] | None):
            self.path = path
            self.log = log

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            record = {
                "step": state.global_step,
                **{k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))},
            }
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if self.log and any(k.startswith("eval_") for k in record):
                shown = ", ".join(
                    f"{k[5:]} {v:.4f}"
                    for k, v in record.items()
                    if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
                )
                self.log(f"step {state.global_step}/{state.max_steps}: {shown}")

    return TimeBudgetCallback, LossLogCallback


# --------------------------------------------------------------------------- shared trainer run
def checkpoint_dir(out_dir: Path) -> Path:
    """Where intermediate checkpoints (for resuming and best-model selection) live, inside the output directory."""
    return Path(out_dir) / "checkpoints"


def training_arguments(
    args_cls: type,
    out_dir: Path,
    settings: TrainSettings,
    metric: str,
    *,
    device: str = "cpu",
    extra: dict[str, Any] | None = None,
) -> Any:
    """Trainer arguments: evaluate and save every ``eval_steps``, keep the best by ``metric``, log to a file only;
    on the GPU only when ``device`` (where the model is) is one."""
    steps = settings.max_steps if settings.max_steps is not None else -1
    return args_cls(
        output_dir=str(checkpoint_dir(out_dir)),
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_ratio=settings.warmup_ratio,
        num_train_epochs=settings.epochs,
        max_steps=steps,
        eval_strategy="steps",
        eval_steps=settings.eval_steps,
        save_strategy="steps",
        save_steps=settings.eval_steps,
        save_total_limit=settings.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{metric}",
        greater_is_better=True,
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to="none",
        use_cpu=str(device) == "cpu",
        disable_tqdm=not settings.progress,
        dataloader_num_workers=0,
        save_only_model=False,
        **(extra or {}),
    )


def last_checkpoint(out_dir: Path) -> str | None:
    """The newest checkpoint under ``out_dir`` to resume from, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = checkpoint_dir(out_dir)
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def fit(
    trainer_cls: type,
    args_cls: type,
    model: Any,
    train_dataset: Any,
    loss: Any,
    evaluator: RankingEvaluator,
    out_dir: Path,
    settings: TrainSettings,
    *,
    extra: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Any, TrainOutcome]:
    """Arguments, callbacks and a ``trainer_cls`` trainer for ``model``, trained by :func:`run_trainer`: the trainer
    (its model now the best checkpoint) and the outcome. Both trainers differ only in the classes, loss and ``extra``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args = training_arguments(
        args_cls, out_dir, settings, f"{evaluator.name}_{PRIMARY_METRIC}", device=model.device.type, extra=extra
    )
    budget_cls, log_cls = trainer_callbacks()
    budget = budget_cls(settings.time_budget_s)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        loss=loss,
        evaluator=evaluator.as_st_evaluator(),
        callbacks=[budget, log_cls(out_dir / "train_log.jsonl", log)],
    )
    return trainer, run_trainer(trainer, out_dir, settings, budget)


def run_trainer(trainer: Any, out_dir: Path, settings: TrainSettings, budget_callback: Any) -> TrainOutcome:
    """Train (resuming from the newest checkpoint when asked), then return what happened; the trainer's model is the
    best checkpoint by the validation metric afterwards."""
    resume = last_checkpoint(out_dir) if settings.resume else None
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.monotonic() - started
    state = trainer.state
    if budget_callback.fired:
        stopped = "time_budget"
    elif settings.max_steps is not None and state.global_step >= settings.max_steps:
        stopped = "max_steps"
    else:
        stopped = "schedule"
    best_step = _checkpoint_step(state.best_model_checkpoint)
    losses = [(int(r["step"]), float(r["loss"])) for r in state.log_history if "loss" in r]
    evaluations = [
        {k: v for k, v in r.items() if k == "step" or k.startswith("eval_")}
        for r in state.log_history
        if any(k.startswith("eval_") for k in r)
    ]
    return TrainOutcome(
        steps=state.global_step,
        seconds=seconds,
        stopped_by=stopped,
        resumed_from=resume,
        best_step=best_step,
        best_metric=state.best_metric,
        losses=losses,
        evaluations=evaluations,
    )


def _checkpoint_step(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return int(Path(path).name.rsplit("-", 1)[-1])
    except ValueError:
        return None
