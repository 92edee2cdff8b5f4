"""`twostage eval`: evaluate the engine on a dataset (`twostage eval DATASET`), or score an existing run file the
way trec_eval does (`twostage eval --run RUN --qrels QRELS`), which needs neither a model nor a compiler."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from twostage.eval.errors import EvalInputError
from twostage.runtime.optional import available, install_hint


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Register both modes' options on the `eval` subcommand's parser."""
    from twostage.runtime.config import add_runtime_arguments

    parser.description = (
        "Evaluate retrieval quality on a dataset (BM25, dense, dense + reranker at several "
        "depths, hybrid RRF, a reranked given run), or score a TREC run like trec_eval."
    )
    parser.add_argument(
        "dataset",
        nargs="?",
        metavar="DATASET",
        help="a dataset folder, a name on the search path (msmarco-dl20, cacm), or a Hugging Face "
        "BEIR dataset; omit with --run/--qrels",
    )
    parser.add_argument(
        "-m",
        "--measure",
        action="append",
        default=[],
        metavar="MEASURE",
        help="measure to compute (repeatable or comma-separated): nDCG@10, MRR@10, R@100, P@10, MAP, "
        "or trec_eval names ndcg_cut.10, recip_rank, recall.100, P.10, map; a bare ndcg_cut, P, "
        "recall or map_cut expands to trec_eval's cutoffs (default: MRR@10 nDCG@10 R@10 R@100 "
        "R@1000 MAP)",
    )
    parser.add_argument(
        "-l",
        "--rel-threshold",
        type=int,
        default=None,
        metavar="L",
        help="lowest label counted relevant by MRR, recall, P and MAP (nDCG stays graded); "
        "default 2 for msmarco-dl* datasets, else 1 (trec_eval -l)",
    )

    group = parser.add_argument_group("dataset mode")
    group.add_argument("--data-dir", help="folder searched first for a dataset given by name")
    group.add_argument("--split", default=None, help="split of a BEIR or MS MARCO dataset (default test / dev)")
    group.add_argument("--model", default=None, help="bi-encoder (default sentence-transformers/all-MiniLM-L6-v2)")
    group.add_argument(
        "--reranker",
        default=None,
        help="none | maxsim | cross-encoder:NAME|PATH (a bare hub id or directory too); default "
        "cross-encoder/ms-marco-MiniLM-L6-v2, falling back to maxsim when it cannot be loaded",
    )
    group.add_argument("--no-rerank", action="store_true", help="no second stage: first-stage systems only")
    group.add_argument(
        "--systems",
        nargs="+",
        default=None,
        metavar="SYSTEM",
        help="subset to run (space- or comma-separated): bm25, dense, hybrid or run, each alone or "
        "+rerank@D (+rerank: every depth), e.g. hybrid+rerank@100; default bm25 dense hybrid "
        "dense+rerank hybrid+rerank (and run run+rerank with --rerank-run)",
    )
    group.add_argument("--depths", default="10,20,50,100", help="rerank depths, comma-separated (default 10,20,50,100)")
    group.add_argument(
        "--rerank-run",
        type=Path,
        default=None,
        metavar="FILE",
        help="also rerank this TREC run's top-d (systems run and run+rerank@D), e.g. a BM25 top-100",
    )
    group.add_argument(
        "--rrf-k", type=float, default=60.0, help="reciprocal rank fusion constant of hybrid (default 60)"
    )
    group.add_argument("--baseline", default="dense", help="system every other is tested against (default dense)")
    group.add_argument(
        "--index",
        default=None,
        metavar="DIR",
        help="collection directory to build or reuse (default ~/.cache/twostage/collections/<dataset>-<hash>)",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the collection in --index DIR (or eval's cached one) and build it anew; without "
        "it a --index collection that is not the one eval builds for this dataset (other "
        "documents, changed texts, no token vectors) is refused and left as it is",
    )
    group.add_argument("--index-type", default="auto", help="flat | hnsw | ivfpq | auto (default; flat below 100k)")
    group.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output folder (default ./runs/eval-<dataset>)"
    )
    group.add_argument("--max-queries", type=int, default=None, metavar="N", help="evaluate the first N queries only")
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars or messages (as in index/add)")

    add_runtime_arguments(parser)

    group = parser.add_argument_group("trec_eval mode")
    group.add_argument("--run", type=Path, default=None, metavar="RUN", help="TREC run file to score")
    group.add_argument("--qrels", type=Path, default=None, metavar="QRELS", help="TREC qrels file")
    group.add_argument(
        "--per-query",
        action="store_true",
        help="also print every query's scores (trec_eval -q; -q is --quiet in every twostage command)",
    )
    group.add_argument(
        "-c",
        "--complete",
        action="store_true",
        help="average over every judged query, counting those missing from the run as 0 (trec_eval -c)",
    )
    group.add_argument(
        "-J", "--judged-only", action="store_true", help="drop unjudged documents before scoring (trec_eval -J)"
    )
    group.add_argument("--json", action="store_true", help="print JSON at full precision instead of trec_eval text")


def run_eval(args: argparse.Namespace) -> int:
    """Dispatch to trec_eval mode (--run/--qrels) or dataset mode (DATASET)."""
    trec_mode = args.run is not None or args.qrels is not None
    if trec_mode and args.dataset:
        raise EvalInputError("give either DATASET or --run RUN --qrels QRELS, not both")
    if trec_mode:
        if args.run is None or args.qrels is None:
            raise EvalInputError("trec_eval mode needs both --run RUN and --qrels QRELS")
        return run_trec_eval(args)
    if not args.dataset:
        raise EvalInputError("give a DATASET (folder or name such as msmarco-dl20), or --run RUN --qrels QRELS")
    return run_dataset_eval(args)


def check_input_file(path: Path, option: str) -> None:
    """An input file given by `option` exists and is a file (else one-line EvalInputError naming it)."""
    if not path.exists():
        raise EvalInputError(f"no such file (given by {option})", path=path)
    if path.is_dir():
        raise EvalInputError(f"is a directory, not a file (given by {option})", path=path)


def check_output_dir(path: Path, option: str = "--out") -> None:
    """The output folder is a directory, or can be made, and can be written to: probed by making (and removing) a
    temporary file in it, or in its nearest existing parent; one-line EvalInputError naming it otherwise."""
    import tempfile

    from twostage.eval.textio import os_reason

    if path.exists() and not path.is_dir():
        raise EvalInputError(f"exists and is not a directory ({option} names the folder the outputs go to)", path=path)
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EvalInputError(f"cannot create the output folder: {parent} is not a directory", path=path)
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise EvalInputError(
            f"cannot write the output folder: {os_reason(err)}" + ("" if parent == path else f" (in {parent})"),
            path=path,
        ) from None


def _warn(message: str) -> None:
    print(f"twostage eval: {message}", file=sys.stderr)


def run_trec_eval(args: argparse.Namespace) -> int:
    """Score `--run` against `--qrels` and print it as trec_eval does (or as JSON)."""
    from twostage.eval.metrics import evaluate
    from twostage.eval.trec import read_qrels, read_run_with_tag
    from twostage.eval.treceval import expand_measures, format_trec_eval, result_to_json

    check_input_file(args.run, "--run")
    check_input_file(args.qrels, "--qrels")
    try:
        measures = expand_measures(args.measure)
    except ValueError as err:
        raise EvalInputError(str(err)) from None
    qrels = read_qrels(args.qrels)
    run, tag = read_run_with_tag(args.run)
    threshold = 1 if args.rel_threshold is None else args.rel_threshold
    if threshold < 1:
        raise EvalInputError(f"-l/--rel-threshold must be at least 1, not {threshold}")
    result = evaluate(
        run,
        qrels,
        [m.measure for m in measures],
        rel_threshold=threshold,
        judged_only=args.judged_only,
        complete=args.complete,
    )
    if result.extra_queries:
        shown = ", ".join(result.extra_queries[:5]) + (", ..." if len(result.extra_queries) > 5 else "")
        _warn(
            f"warning: {len(result.extra_queries)} queries of {args.run} have no judgments in {args.qrels} "
            f"and are ignored: {shown}"
        )
    if result.missing_queries and not args.complete:
        _warn(
            f"note: {len(result.missing_queries)} judged queries have no results in {args.run} and are not "
            "averaged (-c counts them as 0)"
        )
    if args.json:
        out = {
            "run": str(args.run),
            "qrels": str(args.qrels),
            "runid": tag,
            "rel_threshold": threshold,
            "complete": args.complete,
            "judged_only": args.judged_only,
            **result_to_json(result, measures, per_query=args.per_query),
        }
        print(json.dumps(out, indent=2))
    else:
        print(format_trec_eval(result, measures, run_tag=tag, per_query=args.per_query))
    return 0


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EvalInputError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise EvalInputError(f"{what} must be positive integers, got {text!r}")
    return values


def run_dataset_eval(args: argparse.Namespace) -> int:
    """Evaluate every selected system on DATASET, print the table and write every output under --out."""
    from twostage.eval.datasets import load_dataset
    from twostage.eval.harness import EvalConfig, check_config, run_evaluation
    from twostage.eval.metrics import DEFAULT_MEASURES
    from twostage.eval.report import format_report_table, write_report
    from twostage.eval.treceval import expand_measures
    from twostage.runtime.config import runtime_from_args
    from twostage.stages import DEFAULT_RERANKER

    if args.no_rerank and args.reranker:
        raise EvalInputError("--reranker and --no-rerank contradict each other")
    systems = None if args.systems is None else [s for spec in args.systems for s in spec.split(",") if s.strip()]
    try:
        measures = [str(m.measure) for m in expand_measures(args.measure)] if args.measure else list(DEFAULT_MEASURES)
    except ValueError as err:
        raise EvalInputError(str(err)) from None
    log = (lambda message: None) if args.quiet else _warn
    if args.rerank_run is not None:
        check_input_file(args.rerank_run, "--rerank-run")
    if args.index is not None and Path(args.index).exists() and not Path(args.index).is_dir():
        raise EvalInputError("exists and is not a directory (--index names a collection folder)", path=args.index)
    config = EvalConfig(
        model=args.model,
        reranker=None if args.no_rerank else (args.reranker or DEFAULT_RERANKER),
        systems=systems,
        depths=_int_list(args.depths, "--depths"),
        rerank_run=args.rerank_run,
        rrf_k=args.rrf_k,
        baseline=args.baseline,
        index_dir=args.index,
        overwrite=args.overwrite,
        index_type=args.index_type,
        max_queries=args.max_queries,
        rel_threshold=args.rel_threshold,
        measures=measures,
        runtime=runtime_from_args(args),
        progress=not args.quiet,  # bars on stderr, as index/add draw them; -q turns them off
    )
    check_config(config)  # systems, depths, --rrf-k, baseline, -l: before the dataset is read or a model loads
    dataset = load_dataset(args.dataset, data_dir=args.data_dir, split=args.split)
    out = args.out or Path("runs") / f"eval-{dataset.name}"
    check_output_dir(out)
    log(f"dataset {dataset.name}: {len(dataset.queries)} judged queries ({dataset.source})")
    report = run_evaluation(dataset, config, log=log)
    plots = available("matplotlib")
    if not plots:
        log(f"plots skipped: they need matplotlib, which is not installed ({install_hint('plots')})")
    written = write_report(report, out, plots=plots)
    print(format_report_table(report))
    print(f"\nwrote {', '.join(str(p) for p in written.values())}")
    return 0
