"""Keeping a collection in step with folders: which files are new, changed (their SHA-256 differs from the one stored
with their document), unchanged or gone, extracting only the new and changed ones into an on-disk spool so that
memory stays flat however many files there are, and every bad file found before anything is written.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twostage.runtime.optional import MissingExtra

from .extract import StructuredDocument
from .files import FileProblem, FoundFile, Selection, Source, WalkReport, find_files, read_file
from .formats import FORMATS, PLAIN, file_document, format_of


@dataclass
class StoredFiles:
    """What a collection already holds: per root (absolute path) its documents' ids and SHA-256, and the documents
    that came from no root given now (another folder, a corpus file, ``Engine.add``)."""

    by_root: dict[str, dict[str, str]] = field(default_factory=dict)
    root_of: dict[str, str] = field(default_factory=dict)
    others: int = 0
    other_example: str | None = None

    @classmethod
    def read(cls, documents: Iterable[Any], roots: Sequence[Path]) -> StoredFiles:
        """From a collection's documents (one pass, ids and metadata kept, texts dropped as they go)."""
        wanted = {str(r.absolute()) for r in roots}
        stored = cls()
        for doc in documents:
            root = doc.metadata.get("root") if isinstance(doc.metadata, dict) else None
            if isinstance(root, str):
                stored.root_of[doc.id] = root
            if root in wanted:
                stored.by_root.setdefault(root, {})[doc.id] = str(doc.metadata.get("sha256", ""))
            else:
                stored.others += 1
                stored.other_example = stored.other_example or doc.id
        return stored


class DocumentSpool:
    """Extracted documents written to a temporary file as they come and read back in order: extraction runs (and
    every file is checked) before the model loads, without holding the texts in memory."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="twostage-spool-")
        self.count = 0

    def append(self, document: StructuredDocument) -> None:
        pickle.dump(document, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[StructuredDocument]:
        self._file.seek(0)
        for _ in range(self.count):
            yield pickle.load(self._file)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DocumentSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Scan:
    """A scan of the paths given against what the collection holds."""

    spool: DocumentSpool
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    gone: list[str] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)
    walked: WalkReport = field(default_factory=lambda: WalkReport({}))

    @property
    def files(self) -> int:
        return len(self.new) + len(self.changed) + self.unchanged


def default_selection(include: Sequence[str] = (), exclude: Sequence[str] = (), hidden: bool = False) -> Selection:
    return Selection(frozenset(FORMATS), tuple(include), tuple(exclude), hidden)


def scan(
    sources: Sequence[Source],
    selection: Selection,
    stored: StoredFiles,
    *,
    max_size: int,
    skip: Sequence[Path] = (),
    progress: Callable[[int], object] | None = None,
) -> Scan:
    """Walk ``sources``; extract each new or changed file into the spool; note unchanged, gone and bad files.
    ``progress(1)`` is called after each file."""
    result = Scan(spool=DocumentSpool())
    taken: dict[str, str] = {}
    try:
        for source in sources:
            seen: set[str] = set()
            known = stored.by_root.get(str(source.root.absolute()), {})
            for found in find_files(source, selection, result.walked, skip):
                if isinstance(found, FileProblem):
                    result.problems.append(found)
                    continue
                seen.add(found.doc_id)
                problem = _taken_elsewhere(found, taken, stored)
                if problem is not None:
                    result.problems.append(problem)
                    continue
                try:
                    _scan_file(found, known, max_size, result)
                except FileProblem as unreadable:
                    result.problems.append(unreadable)
                if progress is not None:
                    progress(1)
            result.gone.extend(sorted(d for d in set(known) - seen if source.in_scope(d) and _gone(source, d)))
    except BaseException:
        result.spool.close()
        raise
    return result


def _gone(source: Source, doc_id: str) -> bool:
    """A document of a folder is gone when the walk did not meet its file; one of a glob, when its file is missing."""
    return source.pattern is None or not (source.root / doc_id).exists()


def _taken_elsewhere(found: FoundFile, taken: dict[str, str], stored: StoredFiles) -> FileProblem | None:
    """Two files would get one id: under two roots given now, or a root given now and one indexed before."""
    root = str(found.root.absolute())
    if found.doc_id in taken and taken[found.doc_id] != found.label:
        return FileProblem(found.label, f"has the id {found.doc_id!r}, as {taken[found.doc_id]} has")
    taken[found.doc_id] = found.label
    earlier = stored.root_of.get(found.doc_id)
    if earlier is not None and earlier != root:
        return FileProblem(found.label, f"has the id {found.doc_id!r}, already the id of a file under {earlier}")
    return None


def _scan_file(found: FoundFile, known: dict[str, str], max_size: int, result: Scan) -> None:
    read = read_file(found, max_size)
    previous = known.get(found.doc_id)
    if previous == read.sha256:
        result.unchanged += 1
        return
    fmt = format_of(found) or PLAIN
    try:
        document = file_document(found, read, fmt)
    except FileProblem:
        raise
    except MissingExtra as err:  # not the file's fault: the whole run stops, naming the file that needs it
        raise MissingExtra(f"{found.label}: {err}") from None
    except Exception as err:  # a library's own error on a file it cannot read: still one line naming the file
        message = " ".join(str(err).split())[:300]
        raise FileProblem(found.label, f"cannot be read as {fmt.type}: {type(err).__name__}: {message}") from None
    result.spool.append(document)
    (result.new if previous is None else result.changed).append(found.doc_id)
