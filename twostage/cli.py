"""The ``twostage`` command line: index | add | delete | info | search | eval | serve | train."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError

def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that carry a message meant for the user: printed as one line, no traceback."""
    from twostage.indexes.errors import CollectionError, CorpusError
    from twostage.reranker.base import RerankerLoadError
    from twostage.runtime.models import ModelLoadError

    errors: list[type[BaseException]] = [UsageError, CorpusError, CollectionError, RerankerLoadError, ModelLoadError]
    try:
        from twostage.eval.errors import EvalInputError

        errors.append(EvalInputError)
    except ImportError:  # pragma: no cover - eval is part of the package
        pass
    return tuple(errors)


# --------------------------------------------------------------------------- argument parsing
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twostage",
        description="Two-stage retrieve-and-rerank search: bi-encoder + FAISS, then a cross-encoder.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="build a collection from a corpus file or Hugging Face dataset")
    p.add_argument("corpus", help="JSONL, TSV, CSV or Parquet file (optionally .gz), or a Hugging Face dataset name")
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
        action="store_true",
        help="also store each passage's token vectors (int8, ~390 bytes per token) so the MaxSim reranker encodes no "
        "passage at query time",
    )
    _corpus_options(p)
    _encode_options(p)

    p = sub.add_parser("add", help="add or replace documents in an existing collection")
    p.add_argument("directory")
    p.add_argument("corpus")
    _corpus_options(p)
    _encode_options(p)

    p = sub.add_parser("delete", help="delete documents by id")
    p.add_argument("directory")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = sub.add_parser("info", help="describe a collection")
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("search", help="search a collection (one query, or a batch from --queries)")
    p.add_argument("directory")
    p.add_argument("query", nargs="?", help="the query text (omit with --queries)")
    p.add_argument("--queries", type=Path, help="batch mode: a TSV file of qid<TAB>query lines")
    p.add_argument("--run", type=Path, help="batch mode: write results to this TREC run file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _search_options(p)

    p = sub.add_parser("eval", help="evaluate retrieval quality (or score a TREC run like trec_eval)")
    _eval_options(p)

    p = sub.add_parser("serve", help="serve a collection over HTTP with a search page")
    _serve_options(p)

    p = sub.add_parser("train", help="fine-tune a cross-encoder reranker or the bi-encoder (judgments or distillation)")
    _train_options(p)
    return parser


def _corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id-field", help="field holding the document id (guessed: id, _id, doc_id, docid, pid)")
    p.add_argument("--text-field", help="field holding the text (guessed: text, contents, passage, body)")
    p.add_argument("--title-field", help="field holding the title (guessed: title)")
    p.add_argument("--split", default="train", help="split of a Hugging Face dataset (default train)")


def _encode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="documents per encoder batch (default 32)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _backend_option(p)


def _backend_option(p: argparse.ArgumentParser) -> None:
    from twostage.runtime.backends import BACKENDS

    p.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default=None,
        help="inference backend for both models (default auto: openvino when installed, else onnx, else torch; "
        "a collection built with an int8 backend is always searched with it)",
    )


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=100, help="first-stage candidate depth (default 100)")
    p.add_argument("--top", type=int, default=10, dest="top_n", help="number of results shown (default 10)")
    p.add_argument("--no-rerank", action="store_true", help="skip the second stage")
    p.add_argument(
        "--reranker",
        default=None,
        help="cross-encoder hub id or local directory, or 'maxsim' (late interaction over the bi-encoder); "
        "default cross-encoder/ms-marco-MiniLM-L6-v2, falling back to maxsim when offline",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only documents whose metadata KEY equals VALUE (repeatable; all must match)",
    )
    p.add_argument("--ef-search", type=int, default=None, metavar="N",
                   help="HNSW: candidates explored per query (default 128, at least --k); more = higher recall, slower")
    p.add_argument("--nprobe", type=int, default=None, metavar="N",
                   help="IVF: inverted lists scanned per query (default nlist/64, at least 16); more = higher recall, slower")
    _backend_option(p)


def _eval_options(p: argparse.ArgumentParser) -> None:
    from twostage.eval.cli import add_eval_arguments

    add_eval_arguments(p)


def _serve_options(p: argparse.ArgumentParser) -> None:
    from .server_cli import add_serve_arguments

    add_serve_arguments(p)
    _backend_option(p)


def _train_options(p: argparse.ArgumentParser) -> None:
    from .train_cli import add_train_arguments

    add_train_arguments(p)


# --------------------------------------------------------------------------- commands
def parse_filters(pairs: Sequence[str]) -> dict[str, str] | None:
    """``["lang=en", "year=2020"]`` → ``{"lang": "en", "year": "2020"}``; a pair without '=' is a usage error."""
    filters: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--filter {pair!r}: expected KEY=VALUE")
        filters[key.strip()] = value
    return filters or None


def _read_corpus(args: argparse.Namespace):
    from twostage.indexes.readers import read_corpus

    return read_corpus(
        args.corpus, id_field=args.id_field, text_field=args.text_field, title_field=args.title_field, split=args.split
    )


def _add_with_progress(engine: Any, args: argparse.Namespace) -> Any:
    from twostage.indexes.readers import count_corpus
    from tqdm.auto import tqdm

    total = count_corpus(args.corpus) if Path(args.corpus).exists() else None
    with tqdm(total=total, unit="doc", desc="indexing", disable=args.quiet, file=sys.stderr) as bar:
        return engine.add(_read_corpus(args), progress=bar.update)


def _print_add_report(report: Any, directory: str, engine: Any) -> None:
    print(
        f"{directory}: {report.added} added, {report.replaced} replaced, {report.unchanged} unchanged "
        f"({len(engine.collection)} documents) in {report.seconds:.1f}s; "
        f"{report.cache_hits} embeddings from cache"
    )
    if report.truncated:
        print(
            f"note: {report.truncated} document(s) were longer than the model's limit of "
            f"{engine.encoder.max_seq_length} tokens and were truncated for encoding",
            file=sys.stderr,
        )


def cmd_index(args: argparse.Namespace) -> int:
    from twostage.runtime.models import DEFAULT_BI_ENCODER

    from .engine import Engine

    if not args.overwrite and Path(args.directory).exists():
        from twostage.indexes.collection import Collection

        if Collection.exists(args.directory):
            print(f"{args.directory} already holds a collection: resuming (unchanged documents are skipped)", file=sys.stderr)
    engine = Engine.create(
        args.directory,
        model=args.model or DEFAULT_BI_ENCODER,
        index_type=args.index_type,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        reranker=None,
        store_tokens=args.store_tokens,
        backend=args.backend,
    )
    with engine:
        report = _add_with_progress(engine, args)
        _print_add_report(report, args.directory, engine)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from .engine import Engine

    with Engine.open(args.directory, reranker=None, batch_size=args.batch_size, backend=args.backend) as engine:
        report = _add_with_progress(engine, args)
        _print_add_report(report, args.directory, engine)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from twostage.indexes.collection import Collection

    # Deleting needs no model: open the collection alone, so it works even where the bi-encoder cannot load.
    with Collection.open(args.directory) as collection:
        result = collection.delete([str(i) for i in args.ids])
        collection.commit()
        print(f"{args.directory}: deleted {len(result.deleted)} document(s); {len(collection)} remain")
    if result.missing:
        print(f"not found (nothing to delete): {', '.join(result.missing)}", file=sys.stderr)
    return 0 if not result.missing else 1


def cmd_info(args: argparse.Namespace) -> int:
    from twostage.indexes.collection import Collection

    with Collection.open(args.directory) as collection:
        stats = collection.stats()
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
    else:
        width = max(len(k) for k in stats)
        for key, value in stats.items():
            print(f"{key:<{width}}  {value}")
    return 0


def reranker_spec(args: argparse.Namespace) -> str | None:
    """``--no-rerank`` → None; ``--reranker X`` → X (explicit); nothing → the default cross-encoder."""
    from twostage.reranker.cross_encoder import DEFAULT_RERANKER

    if args.no_rerank:
        return None
    return args.reranker or DEFAULT_RERANKER


def cmd_search(args: argparse.Namespace) -> int:
    from .engine import Engine

    if (args.query is None) == (args.queries is None):
        raise UsageError("give either a QUERY or --queries FILE")
    if args.run and not args.queries:
        raise UsageError("--run needs --queries FILE (batch mode)")
    filters = parse_filters(args.filter)
    with Engine.open(args.directory, reranker=reranker_spec(args), backend=args.backend) as engine:
        if args.queries:
            return _search_batch(engine, args, filters)
        result = engine.search(args.query, k=args.k, top_n=args.top_n, rerank=not args.no_rerank, filter=filters,
                               ef_search=args.ef_search, nprobe=args.nprobe)
        for notice in result.notices:
            print(notice, file=sys.stderr)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        else:
            print(format_hits(result))
    return 0


def _search_batch(engine: Any, args: argparse.Namespace, filters: dict[str, str] | None) -> int:
    from twostage.eval.trec import read_queries_tsv, write_run

    queries = read_queries_tsv(args.queries)
    if not queries:
        raise UsageError(f"{args.queries}: no queries found")
    qids = list(queries)
    results = engine.search_many(
        [queries[q] for q in qids], k=args.k, top_n=args.top_n, rerank=not args.no_rerank, filter=filters,
        ef_search=args.ef_search, nprobe=args.nprobe,
    )
    for notice in results[0].notices if results else []:
        print(notice, file=sys.stderr)
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
    "info": cmd_info,
    "search": cmd_search,
    "eval": cmd_eval,
    "serve": cmd_serve,
    "train": cmd_train,
}


def _quiet_model_loading() -> None:
    """transformers draws a progress bar for every model it loads; the CLI shows its own progress instead."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("index", "add", "search", "serve", "train") or (args.command == "eval" and not args.run):
        _quiet_model_loading()
    try:
        return COMMANDS[args.command](args)
    except _user_errors() as err:
        print(f"twostage {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the collection keeps its last committed state", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
