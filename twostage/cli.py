"""The ``twostage`` command line: index | add | delete | info | tokens | search | eval | serve | train."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from twostage.indexes.token_store import ENCODINGS as TOKEN_ENCODINGS
from twostage.runtime.config import runtime_from_args

from .errors import UsageError


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that carry a message meant for the user: printed as one line, no traceback."""
    from twostage.indexes.errors import CollectionError, CorpusError
    from twostage.reranker.base import RerankerLoadError
    from twostage.runtime.config import RuntimeConfigError
    from twostage.runtime.models import ModelLoadError
    from twostage.runtime.optional import MissingExtra

    errors: list[type[BaseException]] = [
        UsageError,
        MissingExtra,
        CorpusError,
        CollectionError,
        RerankerLoadError,
        ModelLoadError,
        RuntimeConfigError,
    ]
    try:
        from twostage.eval.errors import EvalInputError

        errors.append(EvalInputError)
    except ImportError:  # pragma: no cover - eval is part of the package
        pass
    return tuple(errors)


# --------------------------------------------------------------------------- argument parsing
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; given ``command``, the eval/serve/train options are built only for that command (serve's import
    the web server), so that ``search`` starts without them."""
    parser = argparse.ArgumentParser(
        prog="twostage",
        description="Two-stage retrieve-and-rerank search: bi-encoder + FAISS, then a cross-encoder.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"twostage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="build a collection from files and folders, a corpus file or a dataset")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH",
        help="files and folders (.txt, .md, .html, .pdf, .docx; folders recursively), or one JSONL, TSV, CSV or "
        "Parquet corpus file (optionally .gz), BEIR folder or Hugging Face dataset name",
    )
    p.add_argument("--index", "-i", required=True, dest="directory", help="collection directory to create")
    p.add_argument("--model", default=None, help="bi-encoder: hub id or local directory (default all-MiniLM-L6-v2)")
    p.add_argument(
        "--index-type",
        default="auto",
        help="flat | hnsw | ivfpq | auto (by collection size) | a FAISS factory string such as 'HNSW64'",
    )
    p.add_argument("--overwrite", action="store_true", help="discard an existing collection in DIR and start over")
    p.add_argument(
        "--store-tokens",
        nargs="?",
        const="2bit",
        default=False,
        choices=TOKEN_ENCODINGS,
        metavar="2bit|pq|1bit|int8|float16",
        help="also store each passage's token vectors so the MaxSim reranker encodes no passage at query time: "
        "2bit (the default; a centroid id and 2 bits per dimension, ~98 bytes per token at 384-d, pooled by 2.5 "
        "unless --token-pool says otherwise), pq (product "
        "codes, 0.75 bits per dimension: 36 bytes), 1bit (~50), int8 (~388) or float16 (768)",
    )
    p.add_argument(
        "--token-pool",
        type=_pool_factor,
        default=None,
        metavar="F",
        help="with --store-tokens: merge each passage's token vectors F to one (Ward clustering, cluster "
        "means; token pooling) before storing them, F times fewer bytes (default: 2.5 for 2bit, 1 = no "
        "pooling for the others)",
    )
    p.add_argument(
        "--shards",
        type=_positive_int,
        default=None,
        metavar="N",
        help="build a sharded collection: N collections in DIR, documents routed by a hash of their id",
    )
    _ray_option(p, "encode on a Ray cluster's actor pool ('auto', or the head's HOST:PORT); needs --shards")
    p.add_argument(
        "--actors",
        type=_positive_int,
        default=None,
        metavar="N",
        help="with --ray: encoder actors, one model each (default one per cluster CPU, or GPU with --device cuda)",
    )
    _corpus_options(p)
    _encode_options(p)
    from .files_cli import add_file_arguments

    add_file_arguments(p)
    add_wait_argument(p)

    p = sub.add_parser("add", help="add or replace documents in an existing collection")
    p.add_argument("directory")
    p.add_argument("corpus")
    _corpus_options(p)
    _encode_options(p)
    add_wait_argument(p)

    p = sub.add_parser("delete", help="delete documents by id")
    p.add_argument("directory")
    p.add_argument("ids", nargs="+", metavar="ID")
    add_wait_argument(p)

    p = sub.add_parser("check", help="check a collection's files against each other; --repair rebuilds from SQLite")
    p.add_argument("directory")
    p.add_argument(
        "--repair",
        action="store_true",
        help="rebuild what the documents database can rebuild (vector index, manifest counts, token rows)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_wait_argument(p)

    p = sub.add_parser("info", help="describe a collection, or (--backends) the backends measured on this machine")
    p.add_argument("directory", nargs="?", help="collection directory (not needed with --backends)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--backends",
        action="store_true",
        help="the measured backend table and the choice per stage (measured now when not cached yet)",
    )
    p.add_argument(
        "--calibrate", action="store_true", help="with --backends: measure again, replacing the cached choice"
    )
    p.add_argument(
        "--model",
        default=None,
        help="with --backends: the bi-encoder (default: the collection's, else all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--reranker",
        default=None,
        metavar="NAME|PATH",
        help="with --backends: a cross-encoder to measure too (default: the default one, if found)",
    )

    p = sub.add_parser("tokens", help="show, or convert in place, a collection's stored MaxSim token vectors")
    p.add_argument("directory")
    p.add_argument(
        "--convert",
        choices=TOKEN_ENCODINGS,
        metavar="2bit|pq|1bit|int8|float16",
        help="re-encode every stored passage's tokens (a 2bit/1bit/pq codec is learned afresh from the "
        "collection); every shard or none: a crash is finished by the next write or by running it again",
    )
    p.add_argument(
        "--pool",
        type=_pool_factor,
        default=None,
        metavar="F",
        help="with --convert: also merge each passage's tokens F to one (token pooling); only tokens not pooled yet",
    )
    add_wait_argument(p)

    p = sub.add_parser("search", help="search a collection (one query, or a batch from --queries)")
    p.add_argument("directory")
    p.add_argument("query", nargs="?", help="the query text (omit with --queries)")
    p.add_argument("--queries", type=Path, help="batch mode: a TSV file of qid<TAB>query lines")
    p.add_argument("--run", type=Path, help="batch mode: write results to this TREC run file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _search_options(p)
    _ray_option(p, "search a sharded collection through one Ray actor per shard ('auto', or the head's HOST:PORT)")

    heavy = {
        "eval": ("evaluate retrieval quality (or score a TREC run like trec_eval)", _eval_options),
        "serve": ("serve a collection over HTTP with a search page", _serve_options),
        "train": ("fine-tune a cross-encoder reranker or the bi-encoder (judgments or distillation)", _train_options),
    }
    for name, (text, add_options) in heavy.items():
        p = sub.add_parser(name, help=text)
        if command in (None, name):
            add_options(p)
    for p in sub.choices.values():  # -q is accepted by every command, so scripts can pass it to each alike
        if not any("-q" in action.option_strings for action in p._actions):
            p.add_argument("--quiet", "-q", action="store_true", help="no progress output (this command shows none)")
    return parser


def add_wait_argument(p: argparse.ArgumentParser) -> None:
    """``--wait SECONDS``: how long a write waits for another process's write (the collection's writer lock)."""
    from twostage.indexes.lock import DEFAULT_WAIT

    p.add_argument(
        "--wait",
        type=_wait_seconds,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for another process writing to the collection (default {DEFAULT_WAIT:g})",
    )


def _corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id-field", help="field holding the document id (guessed: id, _id, doc_id, docid, pid)")
    p.add_argument("--text-field", help="field holding the text (guessed: text, contents, passage, body)")
    p.add_argument("--title-field", help="field holding the title (guessed: title)")
    p.add_argument("--split", default="train", help="split of a Hugging Face dataset (default train)")


def _wait_seconds(text: str) -> float:
    """``--wait``: seconds, 0 or more (``inf`` waits as long as it takes); NaN and negative values are refused."""
    value = float(text)
    if not value >= 0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _pool_factor(text: str) -> float:
    from twostage.indexes.token_pooling import check_factor

    try:
        return check_factor(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _ray_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--ray", default=None, metavar="auto|HOST:PORT", help=text + " (pip install 'twostage[ray]')")


def _encode_options(p: argparse.ArgumentParser) -> None:
    from twostage.runtime.config import add_runtime_arguments

    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_runtime_arguments(p)


def _search_options(p: argparse.ArgumentParser) -> None:
    from twostage.runtime.config import add_runtime_arguments

    from .search_request import add_search_arguments

    add_search_arguments(p)
    add_runtime_arguments(p)


def _eval_options(p: argparse.ArgumentParser) -> None:
    from twostage.eval.cli import add_eval_arguments

    add_eval_arguments(p)


def _serve_options(p: argparse.ArgumentParser) -> None:
    from .server_cli import add_serve_arguments

    add_serve_arguments(p)


def _train_options(p: argparse.ArgumentParser) -> None:
    from .train_cli import add_train_arguments

    add_train_arguments(p)


# --------------------------------------------------------------------------- commands
def _read_corpus(args: argparse.Namespace):
    from twostage.indexes.readers import read_corpus

    return read_corpus(
        args.corpus, id_field=args.id_field, text_field=args.text_field, title_field=args.title_field, split=args.split
    )


def _validate_corpus(args: argparse.Namespace) -> int:
    """Read the whole corpus once before anything is written: bad input anywhere leaves the collection as it was."""
    from twostage.indexes.readers import validate_corpus

    return validate_corpus(
        args.corpus, id_field=args.id_field, text_field=args.text_field, title_field=args.title_field, split=args.split
    )


def _add_with_progress(engine: Any, args: argparse.Namespace, total: int | None) -> Any:
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="doc", desc="indexing", disable=args.quiet, file=sys.stderr) as bar:
        return engine.add(_read_corpus(args), progress=bar.update)


def _print_add_report(report: Any, directory: str, engine: Any) -> None:
    print(
        f"{directory}: {report.added} added, {report.replaced} replaced, {report.unchanged} unchanged "
        f"({len(engine.collection)} documents) in {report.seconds:.1f}s; "
        f"{report.cache_hits} embeddings from cache"
    )
    _print_truncated(report, engine)


def _print_truncated(report: Any, engine: Any) -> None:
    if report.truncated:
        print(
            f"note: {report.truncated} document(s) were longer than the model's limit of "
            f"{engine.encoder.max_seq_length} tokens and were truncated for encoding",
            file=sys.stderr,
        )


def cmd_index(args: argparse.Namespace) -> int:
    if args.token_pool is not None and not args.store_tokens:
        raise UsageError("--token-pool pools stored token vectors: give --store-tokens too")
    from .files_cli import check_corpus_index, index_files, is_document_input

    documents = [is_document_input(path, args.include) for path in args.inputs]
    if any(documents):
        if not all(documents):
            raise UsageError("give either files and folders of documents, or one corpus file (JSONL, CSV, ...)")
        if args.ray:
            raise UsageError("--ray indexes corpus files; index files and folders without it")
        return _removing_new_directory(args, lambda: index_files(args, args.inputs, _encoder_for(args)))
    if len(args.inputs) > 1:
        raise UsageError("give one corpus file (JSONL, CSV, ...) at a time; files and folders may be several")
    args.corpus = args.inputs[0]
    check_corpus_index(args)
    if not args.overwrite and Path(args.directory).exists():
        from twostage.indexes.sharded import check_writable, collection_exists

        if collection_exists(args.directory):
            check_writable(args.directory)
            print(
                f"{args.directory} already holds a collection: resuming (unchanged documents are skipped)",
                file=sys.stderr,
            )
    if args.ray:
        return _index_on_ray(args)
    total = _validate_corpus(args)
    return _removing_new_directory(args, lambda: _index_into(args, total))


def _removing_new_directory(args: argparse.Namespace, run: Any) -> int:
    """``run()``; a failed index into a new directory leaves no directory (an interrupted one resumes)."""
    created = not Path(args.directory).exists()
    try:
        return run()
    except Exception:
        if created and Path(args.directory).is_dir():
            import shutil

            shutil.rmtree(args.directory, ignore_errors=True)
        raise


def _index_into(args: argparse.Namespace, total: int) -> int:
    with _create_engine(args) as engine:
        report = _add_with_progress(engine, args, total)
        _print_add_report(report, args.directory, engine)
    return 0


def _encoder_for(args: argparse.Namespace) -> Any:
    """For files_cli: ``encode(documents, total, remove)`` adds documents with a progress bar into the collection
    ``index`` creates or resumes, deletes the ids in ``remove``, and returns (add report, documents now held)."""

    def encode(documents: Any, total: int, remove: Sequence[str]) -> tuple[Any, int]:
        from tqdm.auto import tqdm

        with _create_engine(args) as engine:
            with tqdm(total=total, unit="doc", desc="indexing", disable=args.quiet, file=sys.stderr) as bar:
                report = engine.add(documents, progress=bar.update)
            if remove:
                engine.delete(list(remove))
            _print_truncated(report, engine)
            return report, len(engine.collection)

    return encode


def _create_engine(args: argparse.Namespace) -> Any:
    """The engine ``index`` writes with: the collection in ``--index`` created, or resumed when it exists."""
    from twostage.runtime.models import DEFAULT_BI_ENCODER

    from .engine import Engine

    runtime = runtime_from_args(args)
    if not args.quiet:
        _announce_calibration(args.model or DEFAULT_BI_ENCODER, runtime)
    return Engine.create(
        args.directory,
        model=args.model or DEFAULT_BI_ENCODER,
        index_type=args.index_type,
        overwrite=args.overwrite,
        reranker=None,
        store_tokens=args.store_tokens,
        token_pool=args.token_pool,
        runtime=runtime,
        shards=args.shards,
    )


def _announce_calibration(model: str, runtime: Any) -> None:
    """Say what ``--backend auto`` does on a model's first ``index`` here (which backend, and that it exports the
    model once), so the first run does not look stuck; silent afterwards."""
    from twostage.retriever.backend_choice import first_run_notice
    from twostage.runtime.autotune import measured

    device, _ = runtime.placement()
    if measured(runtime.backend, device) and (notice := first_run_notice(model, device)):
        print(notice, file=sys.stderr)


def _index_on_ray(args: argparse.Namespace) -> int:
    """``index --ray``: the same collection, encoded on a Ray actor pool (twostage.distributed, imported only here)."""
    from tqdm.auto import tqdm

    from twostage.indexes.readers import count_corpus
    from twostage.runtime.models import DEFAULT_BI_ENCODER

    if not args.shards:
        raise UsageError("--ray builds a sharded collection: give --shards N too")
    try:
        from .distributed import index_distributed
    except ImportError as err:
        raise UsageError(f"--ray needs Ray ({err}); install it with pip install 'twostage[ray]'") from None
    total = count_corpus(args.corpus) if Path(args.corpus).exists() else None
    with tqdm(total=total, unit="doc", desc="indexing", disable=args.quiet, file=sys.stderr) as bar:
        report, size = index_distributed(
            _read_corpus(args),
            args.directory,
            address=args.ray,
            shards=args.shards,
            actors=args.actors,
            model=args.model or DEFAULT_BI_ENCODER,
            index_type=args.index_type,
            overwrite=args.overwrite,
            store_tokens=args.store_tokens,
            token_pool=args.token_pool,
            runtime=runtime_from_args(args),
            progress=bar.update,
        )
    print(
        f"{args.directory}: {report.added} added, {report.replaced} replaced, {report.unchanged} unchanged "
        f"({size} documents in {args.shards} shards) in {report.seconds:.1f}s on Ray; "
        f"{report.cache_hits} embeddings from cache"
    )
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from twostage.indexes.sharded import check_writable

    from .engine import Engine
    from .files_cli import is_document_input

    if is_document_input(args.corpus, []):
        raise UsageError(
            f"add reads a corpus file; to add files and folders: twostage index {args.corpus} --index "
            f"{args.directory} --add"
        )
    check_writable(args.directory)  # a read-only collection is refused before the corpus is read or a model loads
    total = _validate_corpus(args)
    with Engine.open(args.directory, reranker=None, runtime=runtime_from_args(args)) as engine:
        report = _add_with_progress(engine, args, total)
        _print_add_report(report, args.directory, engine)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from twostage.indexes.sharded import finish_interrupted, open_collection

    # Deleting needs no model: open the collection alone, so it works even where the bi-encoder cannot load.
    # all or nothing: an id that is not there (a typo, most likely) deletes none of the others either
    with open_collection(args.directory) as collection:
        ids = list(dict.fromkeys(str(i) for i in args.ids))
        finished = finish_interrupted(collection)  # re-running an interrupted delete finishes it: those ids count
        already = set(finished.arguments["ids"]) if finished and finished.operation == "delete" else set()
        missing = [doc_id for doc_id, doc in zip(ids, collection.get(ids)) if doc is None and doc_id not in already]
        if missing:
            shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise UsageError(f"{args.directory} has no document {shown}; nothing deleted")
        collection.delete(ids)
        collection.commit()
        print(f"{args.directory}: deleted {len(ids)} document(s); {len(collection)} remain")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from twostage.indexes.check import check_collection
    from twostage.indexes.check_sharded import check_sharded
    from twostage.indexes.sharded import ShardedCollection

    directory = Path(args.directory)
    if ShardedCollection.exists(directory):  # shards.json, then each shard as an ordinary collection
        reports = check_sharded(directory, repair=args.repair, wait=args.wait)
    else:
        reports = [check_collection(directory, repair=args.repair, wait=args.wait)]
    status = max(report.status for report in reports)
    if args.json:
        print(json.dumps([{**r.__dict__, "status": r.status} for r in reports], indent=2))
        return status
    for report in reports:
        print(
            f"{report.path}: {report.documents} documents; "
            + ("whole" if not report.problems else f"{len(report.problems)} problem(s)")
        )
        for line in report.problems:
            print(f"problem: {line}")
        for line in report.repaired:
            print(f"repaired: {line}")
        for line in report.unrepairable:
            print(f"cannot repair: {line}")
    if status == 1:
        print(f"run 'twostage check {args.directory} --repair' to rebuild them from the stored documents")
    return status


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


def cmd_tokens(args: argparse.Namespace) -> int:
    from twostage.indexes.sharded import open_collection

    if args.pool is not None and not args.convert:
        raise UsageError("--pool pools while converting: give --convert ENCODING too (e.g. --convert 2bit --pool 2)")

    with open_collection(args.directory) as collection:
        shards = getattr(collection, "shards", [collection])
        if any(shard.token_store is None for shard in shards):
            raise UsageError(f"collection {args.directory} stores no token vectors (build it with --store-tokens)")
        sizes = [shard.token_store.stats() for shard in shards]
        if args.convert:  # a sharded collection converts every shard or none (an intent record finishes it)
            collection.convert_tokens(args.convert, pool=args.pool)
        for shard, before in zip(shards, sizes):
            after = shard.token_store.stats()
            change = f"{before.bytes_per_passage:,.0f} -> " if args.convert else ""
            pooled = f" pooled by {shard.token_store.pool:g}" if shard.token_store.pool != 1.0 else ""
            print(
                f"{shard.path}: {shard.token_store.encoding} tokens{pooled}, {after.passages} passages, "
                f"{after.tokens_per_passage:.1f} tokens and {change}{after.bytes_per_passage:,.0f} bytes per passage"
                + (f", codec {after.codec_bytes:,} bytes" if after.codec_bytes else "")
            )
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
            print(format_hits(result))
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
            print(f"\n[{qid}] {result.query}\n{format_hits(result)}")
    return 0


def format_hits(result: Any, snippet_width: int = 72) -> str:
    """A readable table: rank, doc id, rerank score, first-stage score (and rank), text snippet."""
    if not result.hits:
        return "no results"
    id_width = min(max(6, *(len(h.doc_id) for h in result.hits)), 24)
    lines = [f"{'rank':>4}  {'doc id':<{id_width}}  {'rerank':>8}  {'1st stage':>14}  text"]
    for hit in result.hits:
        rerank = f"{hit.rerank_score:8.3f}" if hit.rerank_score is not None else f"{'-':>8}"
        first = f"{hit.retrieval_score:.3f} (#{hit.retrieval_rank})"
        text = (f"{hit.title}: " if hit.title else "") + " ".join(hit.text.split())
        snippet = text if len(text) <= snippet_width else text[: snippet_width - 1] + "…"
        lines.append(f"{hit.rank:>4}  {hit.doc_id[:id_width]:<{id_width}}  {rerank}  {first:>14}  {snippet}")
    t = result.timings
    stage = f"reranked by {result.reranker}" if result.reranker else "first stage only"
    lines.append(
        f"{result.candidates} candidates, {stage}; encode {t.encode_s * 1000:.0f} ms, "
        f"search {t.search_s * 1000:.0f} ms, rerank {t.rerank_s * 1000:.0f} ms"
    )
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from twostage.eval.cli import run_eval

    return run_eval(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server_cli import run_serve

    return run_serve(args)


def cmd_train(args: argparse.Namespace) -> int:
    from .train_cli import run_train

    return run_train(args)


COMMANDS = {
    "index": cmd_index,
    "add": cmd_add,
    "delete": cmd_delete,
    "check": cmd_check,
    "info": cmd_info,
    "tokens": cmd_tokens,
    "search": cmd_search,
    "eval": cmd_eval,
    "serve": cmd_serve,
    "train": cmd_train,
}


def _quiet_model_loading() -> None:
    """transformers draws a progress bar for every model it loads; the CLI shows its own progress instead.
    transformers takes Hugging Face Hub's switch, which reads this variable on import: neither is imported for it."""
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    bad = _undecodable_argument(given)
    if bad is not None:
        shown = bad.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        print(f"twostage: error: the argument {shown!r} is not valid UTF-8", file=sys.stderr)
        return 2
    args = build_parser(next((a for a in given if a in COMMANDS), None)).parse_args(given)
    # the CLI prints the engine's notices itself, with its own advice (Python API users get them as warnings)
    warnings.filterwarnings("ignore", message="reranker: ", category=UserWarning)
    if args.command in ("index", "add", "search", "serve", "train") or (args.command == "eval" and not args.run):
        _quiet_model_loading()
    if getattr(args, "wait", None) is not None:
        from twostage.indexes.collection import Collection

        Collection.lock_wait = max(0.0, args.wait)
    try:
        return COMMANDS[args.command](args)
    except _user_errors() as err:  # a reranker that cannot load advises in flags here, in Python's words elsewhere
        message = err.cli_message() if hasattr(err, "cli_message") else err
        print(f"twostage {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # on a line of its own, not after a progress bar's
        print("\ninterrupted; the collection keeps its last committed state", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (sqlite3.Error, OSError) as err:  # storage trouble not met where it is mapped: still one line, exit 2
        print(
            f"twostage {args.command}: error: {_storage_message(err, getattr(args, 'directory', None))}",
            file=sys.stderr,
        )
        return 2


def _storage_message(err: BaseException, directory: str | None) -> str:
    """One line for an OS or SQLite error no command mapped: one on a file outside the collection (an output file, an
    input file) names that file; the collection's own read as ``storage_error`` says."""
    from twostage.indexes.document_store import storage_error

    filename = getattr(err, "filename", None)
    if isinstance(err, OSError) and filename is not None:
        inside = directory is not None and Path(os.path.abspath(filename)).is_relative_to(os.path.abspath(directory))
        if not inside:
            return f"{filename}: {err.strerror or err}"
    return str(storage_error(err, Path(directory or ".") / "documents.sqlite"))


def _undecodable_argument(given: Sequence[str]) -> str | None:
    """The first command-line argument that is not valid UTF-8 (Python hands its bytes over as surrogates), or None."""
    return next((a for a in given if any("\udc80" <= ch <= "\udcff" for ch in a)), None)


if __name__ == "__main__":
    sys.exit(main())
