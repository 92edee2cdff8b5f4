"""``twostage index PATH... --index DIR`` for files and folders: find, extract and check every file first (nothing is
written when one is bad, unless ``--skip-bad``), then encode only the new and changed ones, and with ``--sync``
remove the documents whose files are gone. Corpus files (JSONL, CSV, ...) keep their own path in cli.py.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import UsageError
from .ingest.files import DEFAULT_MAX_FILE_SIZE, FileProblem, Source

#: suffixes the corpus readers take (a file with one of these is a corpus, not a document)
_CORPUS_SUFFIXES = (".jsonl", ".ndjson", ".json", ".tsv", ".csv", ".parquet", ".gz")


def add_file_arguments(p: argparse.ArgumentParser) -> None:
    """The ``index`` options for files and folders."""
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only files matching GLOB "
        "(a file name, or a path under the folder with '/'; repeatable); any suffix is then read as text",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files and folders matching GLOB (repeatable)",
    )
    p.add_argument("--hidden", action="store_true", help="also index hidden files and folders (names starting '.')")
    p.add_argument("--sync", action="store_true", help="remove the documents of files that are gone from the folder")
    p.add_argument("--add", action="store_true", help="add these files to a collection that holds other documents")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="index the other files when some cannot be read, and list those skipped (default: write nothing)",
    )
    p.add_argument(
        "--max-file-size",
        type=_megabytes,
        default=DEFAULT_MAX_FILE_SIZE,
        metavar="MB",
        help=f"refuse larger files (default {DEFAULT_MAX_FILE_SIZE // 2**20} MB)",
    )


def _megabytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of megabytes, got {text}")
    return int(value * 2**20)


def is_document_input(path_text: str, include: Sequence[str]) -> bool:
    """Whether an ``index`` input is files (a folder without a BEIR corpus file, or a document file), not a corpus."""
    from twostage.indexes.readers import DIRECTORY_CORPORA

    from .ingest.formats import FORMATS

    path = Path(path_text).expanduser()
    if not path.exists() and glob.has_magic(path_text):
        return True  # a glob (quoted, so the shell left it): expanded here
    if path.is_dir():
        return not any((path / name).is_file() for name in DIRECTORY_CORPORA)
    suffix = path.suffix.lower()
    if suffix in FORMATS:
        return True
    if path.is_file() and suffix not in _CORPUS_SUFFIXES and include:
        return True  # named by --include: read as text
    return False


def index_files(args: argparse.Namespace, inputs: list[str], encode: Any) -> int:
    """Scan the inputs against the collection, refuse or skip bad files, then ``encode(documents, total, remove)`` the
    new and changed ones (the caller's engine and progress bar), removing the gone ones with ``--sync`` (else listing
    them)."""
    from .ingest.sync import default_selection, scan

    sources = _sources(inputs)
    if not args.overwrite and _collection_exists(args.directory):
        from twostage.indexes.sharded import check_writable

        check_writable(args.directory)  # a read-only collection is refused before any file is read
    stored = _stored(args, [source.root for source in sources])
    if stored.others and not args.add:
        raise UsageError(
            f"{args.directory} holds {stored.others} document(s) that did not come from "
            f"{', '.join(inputs)} (such as {stored.other_example!r}): pass --add to add these files beside them, "
            f"or --overwrite to start over"
        )
    selection = default_selection(args.include, args.exclude, args.hidden)
    from tqdm.auto import tqdm

    with tqdm(unit="file", desc="reading", disable=args.quiet, file=sys.stderr) as bar:
        result = scan(
            sources, selection, stored, max_size=args.max_file_size, skip=[Path(args.directory)], progress=bar.update
        )
    with result.spool:
        if result.problems and (not args.skip_bad or not (result.files or result.gone)):
            raise UsageError(_refusal(result.problems, skip_bad=args.skip_bad))
        if not result.files and not result.gone and not _collection_exists(args.directory):
            passed = _passed_over(result.walked)
            raise UsageError(f"no files to index in {', '.join(inputs)}" + (f"; {passed}" if passed else ""))
        removed: list[str] = []
        report = None
        if len(result.spool) or (args.sync and result.gone) or not _collection_exists(args.directory):
            report, engine_size = encode(iter(result.spool), len(result.spool), result.gone if args.sync else [])
            removed = result.gone if args.sync else []
        else:
            engine_size = _size(args.directory)
    _print_report(args, result, removed, engine_size, report)
    return 0


def check_corpus_index(args: argparse.Namespace) -> None:
    """``index CORPUS``: the file options do not apply, and a collection of files is not merged into silently."""
    given = [
        flag
        for flag, on in (
            ("--include", args.include),
            ("--exclude", args.exclude),
            ("--hidden", args.hidden),
            ("--sync", args.sync),
            ("--skip-bad", args.skip_bad),
        )
        if on
    ]
    if given:
        raise UsageError(f"{given[0]} applies to files and folders, not to a corpus file")
    if args.add or args.overwrite or not _collection_exists(args.directory):
        return
    stored = _stored(args, [])
    if stored.root_of:
        example = next(iter(stored.root_of))
        raise UsageError(
            f"{args.directory} holds {len(stored.root_of)} document(s) indexed from files (such as {example!r}): "
            f"pass --add to add this corpus beside them, or --overwrite to start over"
        )


def _sources(inputs: list[str]) -> list[Source]:
    """Each PATH as a Source; a path that does not exist, or a glob that matches nothing, is a usage error."""
    sources = []
    for text in inputs:
        source = Source.of(text)
        if source.pattern is not None:
            if not glob.glob(str(source.root / source.pattern), recursive=True):
                raise UsageError(f"{text}: matches no file or folder")
        elif not source.root.exists() and not source.root.is_symlink():
            raise UsageError(f"{text}: no such file or folder")
        sources.append(source)
    return sources


def _collection_exists(directory: str) -> bool:
    from twostage.indexes.sharded import collection_exists

    return Path(directory).exists() and collection_exists(directory)


def _stored(args: argparse.Namespace, roots: list[Path]) -> Any:
    """What the collection in ``--index`` holds (nothing when it is new or ``--overwrite`` discards it)."""
    from .ingest.sync import StoredFiles

    if args.overwrite or not _collection_exists(args.directory):
        return StoredFiles()
    from twostage.indexes.sharded import open_collection

    with open_collection(args.directory) as collection:
        return StoredFiles.read(collection.iter_documents(), roots)


def _size(directory: str) -> int:
    from twostage.indexes.sharded import open_collection

    with open_collection(directory) as collection:
        return len(collection)


def _refusal(problems: list[FileProblem], skip_bad: bool) -> str:
    """One line per bad file, then what happened: nothing was written."""
    lines = [str(p) for p in problems]
    tail = "no file could be indexed" if skip_bad else "nothing was written (--skip-bad indexes the other files)"
    if len(lines) == 1:
        return f"{lines[0]}; {tail}"
    return "\n".join(
        [lines[0], *(f"  {line}" for line in lines[1:]), f"  {len(lines)} files cannot be indexed; {tail}"]
    )


def _passed_over(walked: Any) -> str:
    """What the walk left out, in words: ``passed over 3 .png, 1 .py, 2 hidden (...)``, or ''."""
    parts = [f"{n} {suffix}" for suffix, n in sorted(walked.other_types.items(), key=lambda kv: (-kv[1], kv[0]))]
    if walked.hidden:
        parts.append(f"{walked.hidden} hidden")
    if not parts:
        return ""
    return f"passed over {', '.join(parts)} (no extractor reads these types; --include GLOB reads files as text, --hidden takes hidden ones)"


def _print_report(args: argparse.Namespace, result: Any, removed: list[str], size: int, report: Any) -> None:
    seconds = f" in {report.seconds:.1f}s" if report is not None else ""
    print(
        f"{args.directory}: {len(result.new)} new, {len(result.changed)} changed, {result.unchanged} unchanged, "
        f"{len(removed)} removed ({size} documents){seconds}"
    )
    if result.gone and not removed:
        shown = ", ".join(result.gone[:10]) + (f" and {len(result.gone) - 10} more" if len(result.gone) > 10 else "")
        print(
            f"{len(result.gone)} file(s) gone since the last run, their documents kept (--sync removes them): {shown}"
        )
    passed = _passed_over(result.walked)
    if passed and not args.quiet:
        print(f"note: {passed}", file=sys.stderr)
    if result.problems:
        print(f"skipped {len(result.problems)} file(s) that cannot be indexed:", file=sys.stderr)
        for problem in result.problems:
            print(f"  {problem}", file=sys.stderr)
