"""The commands that write a collection: ``index``, ``add``, ``delete``, ``check`` and ``tokens``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from twostage.runtime.config import runtime_from_args

from .errors import UsageError


def _read_corpus(args: argparse.Namespace) -> Iterator[Any]:
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
        f"({len(engine.collection)} documents, {engine.collection.passage_count()} passages) in {report.seconds:.1f}s; "
        f"{report.cache_hits} embeddings from cache"
    )
    _print_truncated(report, engine)


def _print_truncated(report: Any, engine: Any) -> None:
    if report.split:
        print(
            f"{report.split} document(s) longer than the model's window of {engine.encoder.max_seq_length} tokens "
            f"were split: {report.passages} passages written"
        )
    if report.truncated:
        print(
            f"note: {report.truncated} passage(s) were still longer than the model's limit of "
            f"{engine.encoder.max_seq_length} tokens (one word longer than the window) and were truncated for encoding",
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
        from .shards.indexing import index_distributed
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


def cmd_tokens(args: argparse.Namespace) -> int:
    from twostage.indexes.sharded import open_collection
    from twostage.indexes.token_store import LEARNED, TRAIN_AT
    from twostage.runtime.blas import numpy_blas_single_threaded

    if args.pool is not None and not args.convert:
        raise UsageError("--pool pools while converting: give --convert ENCODING too (e.g. --convert 2bit --pool 2)")

    with open_collection(args.directory) as collection:
        shards = getattr(collection, "shards", [collection])
        if any(shard.token_store is None for shard in shards):
            raise UsageError(f"collection {args.directory} stores no token vectors (build it with --store-tokens)")
        sizes = [shard.token_store.stats() for shard in shards]
        if args.convert:  # a sharded collection converts every shard or none (an intent record finishes it)
            with numpy_blas_single_threaded():  # --pool's small products run faster on one BLAS thread
                collection.convert_tokens(args.convert, pool=args.pool)
        for shard, before in zip(shards, sizes):
            after = shard.token_store.stats()
            change = f"{before.bytes_per_passage:,.0f} -> " if args.convert else ""
            store = shard.token_store
            pooled = f" pooled by {store.pool:g}" if store.pool != 1.0 else ""
            print(
                f"{shard.path}: {store.encoding} tokens{pooled}, {after.passages} passages, "
                f"{after.tokens_per_passage:.1f} tokens and {change}{after.bytes_per_passage:,.0f} bytes per passage"
                + (f", codec {after.codec_bytes:,} bytes" if after.codec_bytes else "")
                + (
                    f" (kept as int8 until {TRAIN_AT:,} tokens are stored, {after.tokens:,} so far; "
                    f"--convert {store.encoding} compresses them now)"
                    if store.encoding in LEARNED and store.codec is None and after.tokens
                    else ""
                )
            )
    return 0
