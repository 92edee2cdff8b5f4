"""The commands that read a collection: ``search`` (one query or a batch into a TREC run) and ``info``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .hit_text import emphasis, format_hits


def cmd_info(args: argparse.Namespace) -> int:
    from twostage.indexes.sharded import open_collection

    if args.backends or args.calibrate:
        return _backends_info(args)
    if not args.directory:
        raise UsageError("give a collection DIRECTORY (or --backends for the backends measured on this machine)")
    with open_collection(args.directory) as collection:
        stats = collection.stats()
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
    else:
        shards = stats.pop("shards", [])
        width = max(len(k) for k in stats)
        for key, value in stats.items():
            print(f"{key:<{width}}  {value}")
        for shard in shards:  # a sharded collection: one line per shard
            print(
                f"{shard['shard']:<{width}}  {shard['document_count']} documents, {shard['factory']}, "
                f"{shard['disk_bytes']} bytes"
            )
    return 0


def _backends_info(args: argparse.Namespace) -> int:
    """``info --backends``: per stage, every backend's quality gate and throughput, the choice, the CPU, the cache."""
    from dataclasses import asdict

    from twostage.indexes.sharded import open_collection
    from twostage.reranker.backend_choice import cross_encoder_choice
    from twostage.reranker.base import RerankerLoadError
    from twostage.reranker.resolve import DEFAULT_RERANKER
    from twostage.retriever.backend_choice import bi_encoder_choice
    from twostage.runtime.autotune import describe
    from twostage.runtime.backends import configure_threads
    from twostage.runtime.cpu import cpu_info
    from twostage.runtime.models import DEFAULT_BI_ENCODER

    model = args.model
    if model is None and args.directory:
        with open_collection(args.directory) as collection:
            model = collection.manifest.model_name
    model = model or DEFAULT_BI_ENCODER
    print("measuring where nothing is cached yet (once per machine and model) ...", file=sys.stderr)
    found = {"bi-encoder": (model, bi_encoder_choice(model, recalibrate=args.calibrate))}
    try:
        name = args.reranker or DEFAULT_RERANKER
        found["cross-encoder"] = (name, cross_encoder_choice(name, recalibrate=args.calibrate))
    except RerankerLoadError as error:
        if args.reranker:
            raise
        skipped = f"{DEFAULT_RERANKER} not found ({error.reason}); pass --reranker NAME|PATH to measure a cross-encoder"
    cpu, threads = cpu_info(), configure_threads()
    override = os.environ.get("TWOSTAGE_BACKEND", "").strip().lower()
    if args.json:
        stages = {
            stage: {"model": name, **({**asdict(c), "path": str(c.path)} if c else {"choice": None})}
            for stage, (name, c) in found.items()
        }
        print(
            json.dumps(
                {"cpu": cpu.model, "isa": cpu.isa, "threads": threads, "override": override or None, "stages": stages},
                indent=2,
            )
        )
        return 0
    print(f"cpu: {cpu.model} ({', '.join(cpu.isa) or 'none of the listed ISA extensions'}), {threads} threads")
    for stage, (name, calibration) in found.items():
        if calibration is None:
            print(f"{stage} {name}: no local files to measure; the default preference is used")
            continue
        print(
            f"{stage} {name}: {calibration.choice} (measured {calibration.measured_at}: "
            f"{calibration.measure_seconds:.1f} s measuring, {calibration.load_seconds:.1f} s loading and exports)"
        )
        print(f"  cache: {calibration.path}")
        print("\n".join(describe(calibration)))
    if "cross-encoder" not in found:
        print(f"cross-encoder: {skipped}; the MaxSim reranker runs on the bi-encoder's backend")
    if override and override != "auto":
        print(f"note: TWOSTAGE_BACKEND={override} is set, and overrides these choices")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    # every argument and input is checked before the engine (and a model) loads: a mistake costs no start-up time
    from .search_request import SearchRequest

    if (args.query is None) == (args.queries is None):
        raise UsageError("give either a QUERY or --queries FILE")
    if args.run and not args.queries:
        raise UsageError("--run needs --queries FILE (batch mode)")
    if args.query is not None and not args.query.strip():
        raise UsageError("the query is empty; give some words to search for")
    request = SearchRequest.from_args(args)
    queries = _read_queries(args.queries) if args.queries else None
    if args.run:
        writable_file(args.run, "--run")
    from .engine import Engine

    with Engine.open(args.directory, request=request, ray=args.ray) as engine:
        if queries is not None:
            return _search_batch(engine, args, request, queries)
        result = engine.search(args.query, request)
        _print_notices(engine, result.notices)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        else:
            print(format_hits(result, emphasis=emphasis()))
    return 0


def _print_notices(engine: Any, notices: Sequence[str]) -> None:
    """The engine's notices (a reranker fallback, with this interface's advice) and the search's own, on stderr."""
    for notice in engine.notices:
        print(f"{notice} (pass --reranker PATH to use a cross-encoder)", file=sys.stderr)
    for notice in notices:
        print(notice, file=sys.stderr)


def writable_file(path: Path, option: str) -> None:
    """An output file's place, checked before any work: not a directory, in a directory that exists and can be
    written (a one-line UsageError naming ``option`` and the path otherwise)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; name a file")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: {parent} cannot be written")


def _read_queries(path: Path) -> dict[str, str]:
    """``--queries``: qid -> text; a missing, empty or malformed file, or an empty query, is a one-line error."""
    from twostage.eval.trec import read_queries_tsv

    if not path.is_file():
        raise UsageError(f"{path}: no such queries file")
    queries = read_queries_tsv(path)
    if not queries:
        raise UsageError(f"{path}: no queries found")
    empty = next((qid for qid, text in queries.items() if not text.strip()), None)
    if empty is not None:
        raise UsageError(f"{path}: query {empty} is empty")
    return queries


def _search_batch(engine: Any, args: argparse.Namespace, request: Any, queries: dict[str, str]) -> int:
    from twostage.eval.trec import write_run

    qids = list(queries)
    # a TREC run holds every candidate (as Pyserini's do), so recall at any depth up to the candidate depth can be
    # measured
    if args.run:
        request = replace(request, top_k=max(request.candidate_depth, request.top_k))
    by_qid = engine.search_queries(queries, request)
    results = [by_qid[q] for q in qids]
    _print_notices(engine, results[0].notices if results else [])
    run = {qid: result.run() for qid, result in zip(qids, results)}
    if args.run:
        write_run(run, args.run, tag="twostage")
        print(f"wrote {sum(len(r) for r in run.values())} lines for {len(run)} queries to {args.run}")
    if args.json:
        print(json.dumps({qid: r.to_dict() for qid, r in zip(qids, results)}, indent=2, ensure_ascii=False))
    elif not args.run:
        for qid, result in zip(qids, results):
            print(f"\n[{qid}] {result.query}\n{format_hits(result, emphasis=emphasis())}")
    return 0
