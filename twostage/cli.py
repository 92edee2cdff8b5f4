"""The ``twostage`` command line: index | add | delete | info | tokens | search | eval | serve | train."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from twostage.indexes.token_store import ENCODINGS as TOKEN_ENCODINGS
from twostage.runtime.allocator import return_large_buffers

from .cli_args import (
    add_wait_argument,
    corpus_options,
    encode_options,
    pool_factor,
    positive_int,
    ray_option,
    search_options,
)
from .cli_read import cmd_info, cmd_search
from .cli_write import cmd_add, cmd_check, cmd_delete, cmd_index, cmd_tokens
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
        type=pool_factor,
        default=None,
        metavar="F",
        help="with --store-tokens: merge each passage's token vectors F to one (Ward clustering, cluster "
        "means; token pooling) before storing them, F times fewer bytes (default: 2.5 for 2bit, 1 = no "
        "pooling for the others)",
    )
    p.add_argument(
        "--shards",
        type=positive_int,
        default=None,
        metavar="N",
        help="build a sharded collection: N collections in DIR, documents routed by a hash of their id",
    )
    ray_option(p, "encode on a Ray cluster's actor pool ('auto', or the head's HOST:PORT); needs --shards")
    p.add_argument(
        "--actors",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --ray: encoder actors, one model each (default one per cluster CPU, or GPU with --device cuda)",
    )
    corpus_options(p)
    encode_options(p)
    from .files_cli import add_file_arguments

    add_file_arguments(p)
    add_wait_argument(p)

    p = sub.add_parser("add", help="add or replace documents in an existing collection")
    p.add_argument("directory")
    p.add_argument("corpus")
    corpus_options(p)
    encode_options(p)
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
        type=pool_factor,
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
    search_options(p)
    ray_option(p, "search a sharded collection through one Ray actor per shard ('auto', or the head's HOST:PORT)")

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


def _eval_options(p: argparse.ArgumentParser) -> None:
    from twostage.eval.cli import add_eval_arguments

    add_eval_arguments(p)


def _serve_options(p: argparse.ArgumentParser) -> None:
    from .server_cli import add_serve_arguments

    add_serve_arguments(p)


def _train_options(p: argparse.ArgumentParser) -> None:
    from .train_cli import add_train_arguments

    add_train_arguments(p)


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
    return_large_buffers()  # a long index run's memory otherwise grows with glibc's fragmented arenas
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
