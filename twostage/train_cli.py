"""``twostage train reranker|retriever``: arguments and dispatch to ``twostage.training``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from twostage.training.run import TrainOptions

EXAMPLE = """example (distil late interaction into a cross-encoder, test on held-out TREC DL 2020):
  twostage index data/msmarco-dl20/corpus.jsonl --index runs/dl20
  twostage train reranker --collection runs/dl20 --queries data/msmarco-dev-queries/queries.tsv \\
      --out runs/ce-distilled --test-dataset msmarco-dl20 --time-budget 40m
"""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``train reranker`` and ``train retriever`` (same options; the defaults differ by loss)."""
    parser.description = "Fine-tune a cross-encoder reranker or the first-stage bi-encoder."
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    for what, help_text in (
        ("reranker", "fine-tune a cross-encoder (output loads with CrossEncoder(DIR) and --reranker DIR)"),
        ("retriever", "fine-tune the bi-encoder (re-index with twostage index --model DIR)"),
    ):
        p = sub.add_parser(what, help=help_text, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
        _options(p, what)


def _options(p: argparse.ArgumentParser, what: str) -> None:
    from twostage.runtime.config import add_runtime_arguments

    data = p.add_argument_group("data")
    data.add_argument(
        "--collection",
        required=True,
        type=Path,
        metavar="DIR",
        help="twostage collection whose dense top-k gives candidates and mined negatives",
    )
    data.add_argument(
        "--queries",
        required=True,
        metavar="FILE|DATASET",
        help="training queries: a qid<TAB>text file or a dataset folder / name",
    )
    data.add_argument(
        "--qrels",
        default=None,
        metavar="FILE",
        help="TREC qrels of the training queries (with --teacher none, a dataset's own qrels are used)",
    )
    data.add_argument(
        "--teacher",
        default="maxsim",
        help="ranker whose scores the student learns: 'maxsim' (late interaction over the collection's "
        "bi-encoder, default), a cross-encoder directory / id, or 'none' (judgments only)",
    )
    data.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="DATASET|FILE",
        help="never train on these queries (by id or text; repeatable); --test-dataset is always excluded",
    )
    data.add_argument("--max-queries", type=int, default=2000, help="training queries used (default 2000)")
    data.add_argument(
        "--val-queries",
        type=int,
        default=50,
        help="queries held out for validation and best-checkpoint selection (default 50)",
    )
    data.add_argument("--depth", type=int, default=20, help="dense candidates mined per query (default 20)")
    data.add_argument("--val-depth", type=int, default=20, help="candidates per validation query (default 20)")
    data.add_argument(
        "--unjudged",
        choices=("skip", "negative"),
        default="skip",
        help="with judgments only: drop unjudged candidates (default) or treat them as non-relevant",
    )

    recipe = p.add_argument_group("recipe")
    recipe.add_argument(
        "--base",
        default=None,
        metavar="MODEL",
        help="starting weights (default all-MiniLM-L6-v2; a bi-encoder gets a fresh one-logit head)",
    )
    losses = ("margin-mse", "listwise-kl", "bce") if what == "reranker" else ("mnrl", "margin-mse")
    recipe.add_argument("--loss", choices=losses, default=losses[0], help=f"default {losses[0]}")
    recipe.add_argument("--negatives", type=int, default=3, help="negatives per margin-MSE row (default 3)")
    recipe.add_argument("--list-size", type=int, default=8, help="documents per listwise-kl list (default 8)")
    recipe.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="listwise-kl: teacher scores are divided by this before the softmax (default 1)",
    )
    recipe.add_argument(
        "--lr",
        type=float,
        default=1e-4 if what == "reranker" else 5e-5,
        help="learning rate of the body (default %(default)s)",
    )
    recipe.add_argument(
        "--head-lr",
        type=float,
        default=2e-3 if what == "reranker" else None,
        help="learning rate of the fresh classification head and the [CLS] pooler (default %(default)s)",
    )
    recipe.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (default 0.1)")
    recipe.add_argument("--batch-size", type=int, default=16, help="rows per step (default 16)")
    recipe.add_argument("--epochs", type=float, default=1.0, help="passes over the rows (default 1)")
    recipe.add_argument("--max-length", type=int, default=128, help="cross-encoder token limit (default 128)")
    recipe.add_argument("--seed", type=int, default=12)

    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (model + report)")
    run.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    run.add_argument(
        "--time-budget",
        default="40m",
        help="stop training after this long, e.g. 900, 45m, 1.5h; 'none' for no limit (default 40m)",
    )
    run.add_argument("--eval-steps", type=int, default=40, help="validate and checkpoint every N steps (default 40)")
    run.add_argument("--no-resume", action="store_true", help="ignore checkpoints in DIR and start over")
    run.add_argument(
        "--test-dataset",
        default=None,
        metavar="DATASET",
        help="held-out dataset evaluated after training with the harness (e.g. msmarco-dl20)",
    )
    run.add_argument("--test-depths", default="20,50,100", help="rerank depths on the test set (default 20,50,100)")
    run.add_argument("--no-test-before", action="store_true", help="skip the test of the untrained model")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_runtime_arguments(p, batch_size=False)


def _check_recipe(args: argparse.Namespace, budget: float | None) -> None:
    """The numbers of a training recipe, checked before any model loads (a NaN or negative rate would otherwise
    surface as a traceback, or as NaN scores after training)."""

    def finite(value: float | None) -> bool:
        return value is None or math.isfinite(value)

    checks = [
        (finite(args.lr) and args.lr > 0, f"--lr must be a positive number (got {args.lr})"),
        (
            args.head_lr is None or (finite(args.head_lr) and args.head_lr > 0),
            f"--head-lr must be a positive number (got {args.head_lr})",
        ),
        (
            finite(args.warmup) and 0 <= args.warmup < 1,
            f"--warmup is a fraction of the steps, 0 to below 1 (got {args.warmup})",
        ),
        (
            finite(args.temperature) and args.temperature > 0,
            f"--temperature must be a positive number (got {args.temperature})",
        ),
        (finite(args.epochs) and args.epochs > 0, f"--epochs must be a positive number (got {args.epochs})"),
        (args.list_size >= 2, f"--list-size must be at least 2 (a list ranks documents; got {args.list_size})"),
        (1 <= args.max_length <= 8192, f"--max-length must be 1 to 8192 tokens (got {args.max_length})"),
        (
            budget is None or (math.isfinite(budget) and budget > 0),
            f"--time-budget must be positive (got {args.time_budget})",
        ),
        (str(args.out).strip() not in ("", "."), "--out must name an output directory"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """Command-line arguments → ``TrainOptions``."""
    from twostage.runtime.config import runtime_from_args
    from twostage.training.common import TrainSettings
    from twostage.training.run import TrainOptions, parse_duration

    budget = None if str(args.time_budget).lower() == "none" else parse_duration(args.time_budget)
    for name in (
        "max_queries",
        "val_queries",
        "depth",
        "val_depth",
        "batch_size",
        "eval_steps",
        "negatives",
        "max_steps",
    ):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
    _check_recipe(args, budget)
    try:
        depths = tuple(int(d) for d in args.test_depths.split(",") if d.strip())
    except ValueError:
        raise UsageError(f"--test-depths {args.test_depths!r}: expected comma-separated integers") from None
    settings = TrainSettings(
        learning_rate=args.lr,
        head_learning_rate=args.head_lr,
        warmup_ratio=args.warmup,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_steps=args.max_steps,
        time_budget_s=budget,
        eval_steps=args.eval_steps,
        seed=args.seed,
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    teacher = None if str(args.teacher).lower() == "none" else args.teacher
    return TrainOptions(
        kind=args.what,
        out=args.out,
        collection=args.collection,
        queries=args.queries,
        base=args.base,
        qrels=args.qrels,
        teacher=teacher,
        exclude=list(args.exclude),
        max_queries=args.max_queries,
        val_queries=args.val_queries,
        depth=args.depth,
        val_depth=args.val_depth,
        loss=args.loss,
        negatives=args.negatives,
        list_size=args.list_size,
        temperature=args.temperature,
        unjudged=args.unjudged,
        max_length=args.max_length,
        settings=settings,
        test_dataset=args.test_dataset,
        test_depths=depths,
        test_before=not args.no_test_before,
        runtime=runtime_from_args(args, batch_size=False),
    )


def run_train(args: argparse.Namespace) -> int:
    """Train, print where the model and report went; user errors become one line (handled by the main CLI)."""
    from twostage.runtime.optional import require
    from twostage.training.run import train

    for module in ("accelerate", "datasets"):  # before anything is read: transformers' Trainer, the training rows
        require(module, "train", "twostage train")
    opts = options_from_args(args)
    if not Path(opts.collection).exists():
        raise UsageError(f"--collection {opts.collection}: no such collection (build one with twostage index)")
    report = train(opts, evaluate_test=evaluate_on_test)
    val = report["validation"]
    after = val.get("after") or {}
    print(
        f"{opts.out}: {report['training']['steps']} steps, validation nDCG@10 "
        f"{val['before']['ndcg@10']:.4f} -> {after.get('ndcg@10', float('nan')):.4f}; report {opts.out / 'report.md'}"
    )
    return 0


def evaluate_on_test(
    opts: TrainOptions, base: str, out: Path, before_dir: Path | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """nDCG@10 / MRR@10 on the held-out test dataset through ``eval.harness``: dense alone and dense + the model at
    each depth (reranker), or dense with the base and the trained bi-encoder (retriever). Here, not in ``training``,
    so training needs the stages, the engine and eval's metrics only; this front end composes it with the harness."""
    from twostage.eval.datasets import load_dataset
    from twostage.eval.harness import EvalConfig, run_evaluation

    assert opts.test_dataset is not None  # called only when a test set was given
    dataset = load_dataset(opts.test_dataset)
    depths = sorted(set(opts.test_depths))
    measures = ("nDCG@10", "MRR@10")

    def metrics(**config: Any) -> dict[str, dict[str, float]]:
        report = run_evaluation(
            dataset,
            EvalConfig(
                measures=measures,
                n_resamples=1000,
                runtime=opts.runtime,
                first_stage_depth=max(depths + [100]),
                rel_threshold=opts.rel_threshold,
                **config,
            ),
            log=log,
        )
        return {s.name: {k: round(v, 4) for k, v in s.metrics.items()} for s in report.systems}

    systems = ["dense"] + [f"dense+rerank@{d}" for d in depths]
    result: dict[str, Any] = {"dataset": opts.test_dataset, "queries": len(dataset.queries), "depths": depths}
    if opts.kind == "reranker":
        log(f"test on {opts.test_dataset}: trained cross-encoder at depths {depths}")
        result["after"] = metrics(reranker=str(out), systems=systems)
        if before_dir is not None:
            log(f"test on {opts.test_dataset}: untrained student at depths {depths}")
            result["before"] = metrics(reranker=str(before_dir), systems=systems)
    else:
        log(f"test on {opts.test_dataset}: trained bi-encoder (re-encodes the corpus once)")
        result["after"] = metrics(model=str(out), reranker=None, systems=["dense"])
        if opts.test_before:
            result["before"] = metrics(model=base, reranker=None, systems=["dense"])
    return result
