"""Finding the files to index under the paths a user gives, and reading each one safely.

A directory is walked recursively in sorted order (so ids and reports are stable), following symbolic links but never
into a directory it is already inside (a symlink loop is reported, not followed forever). Hidden files and folders
(a name starting with ``.``) are skipped unless asked for. A file's id is its path relative to the root given, with
``/`` separators on every system; a file given by itself is its own root and its id is its name.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: the default ``--max-file-size``: a larger file is refused (or skipped with --skip-bad), not read into memory
DEFAULT_MAX_FILE_SIZE = 64 * 1024 * 1024


class FileProblem(Exception):
    """A file that cannot be indexed; ``str(err)`` reads ``docs/a.pdf: encrypted PDF (needs a password)``."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class FoundFile:
    """A file to index: ``path`` as reached from the root the user gave, ``doc_id`` its id, ``root`` that root."""

    root: Path
    path: Path
    doc_id: str

    @property
    def label(self) -> str:
        """How messages name the file: as the user would type it."""
        return str(self.path)


@dataclass(frozen=True)
class Selection:
    """Which files a walk takes: ``include``/``exclude`` are globs matched against a file's name (a pattern without
    ``/``) or its path relative to the root; ``suffixes`` are those with an extractor."""

    suffixes: frozenset[str]
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hidden: bool = False

    def excluded(self, relative: PurePosixPath) -> bool:
        return any(_matches(relative, pattern) for pattern in self.exclude)

    def wanted(self, relative: PurePosixPath) -> bool:
        """Included: by ``--include`` when given (whatever the suffix), else by a suffix an extractor reads."""
        if self.excluded(relative):
            return False
        if self.include:
            return any(_matches(relative, pattern) for pattern in self.include)
        return relative.suffix.lower() in self.suffixes


def _matches(relative: PurePosixPath, pattern: str) -> bool:
    pattern = pattern.strip("/")
    if "/" in pattern:
        return fnmatch.fnmatchcase(str(relative), pattern) or fnmatch.fnmatchcase(str(relative), f"*/{pattern}")
    return fnmatch.fnmatchcase(relative.name, pattern)


@dataclass
class WalkReport:
    """What a walk passed over: files of types without an extractor, by suffix (``{".png": 3}``), and hidden ones."""

    other_types: dict[str, int]
    hidden: int = 0


@dataclass(frozen=True)
class Source:
    """One path given: a folder or a file (``pattern`` None), or a glob as its literal folder and the pattern under it
    (``docs/**/*.md`` is ``docs`` and ``**/*.md``), so that its files' ids are paths under that folder."""

    root: Path
    pattern: str | None = None

    @classmethod
    def of(cls, text: str) -> Source:
        path = Path(text).expanduser()
        if path.exists() or path.is_symlink() or not glob.has_magic(text):
            return cls(path)
        parts = path.parts
        first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        return cls(Path(*parts[:first]) if first else Path("."), "/".join(parts[first:]))

    def in_scope(self, doc_id: str) -> bool:
        """Whether a document of this root is one this source would take (all of them for a folder)."""
        return self.pattern is None or fnmatch.fnmatchcase(doc_id, self.pattern)


def find_files(
    source: Source, selection: Selection, report: WalkReport, skip: Sequence[Path] = ()
) -> Iterator[FoundFile | FileProblem]:
    """The files of ``source`` that ``selection`` takes, in sorted order, and a :class:`FileProblem` for each place
    that cannot be walked (a symlink loop, a folder that cannot be listed). ``skip`` names directories never entered
    (the collection being written, when it lies inside the folder). A glob's matches are taken whatever their suffix
    (a file that no reader knows is read as text), hidden ones only when the pattern names them (``.*``); a folder it
    matches is walked."""
    root = source.root
    if source.pattern is not None:
        yield from _glob(source, selection, report, skip)
        return
    if not root.is_dir():
        yield FoundFile(root=root, path=root, doc_id=root.name)
        return
    skipped = {_identity(p) for p in skip if p.exists()}
    yield from _walk(root, root, PurePosixPath(), selection, report, {_identity(root)}, skipped)


def _glob(
    source: Source, selection: Selection, report: WalkReport, skip: Sequence[Path]
) -> Iterator[FoundFile | FileProblem]:
    assert source.pattern is not None
    base = str(source.root / "x")[:-1]  # the root with its trailing separator, to cut it off each match
    for match in sorted(glob.glob(str(source.root / source.pattern), recursive=True)):
        relative = PurePosixPath(Path(match[len(base) :]).as_posix())
        path = Path(match)
        if selection.excluded(relative):
            continue
        if path.is_dir():
            for found in find_files(Source(path), selection, report, skip):
                if isinstance(found, FoundFile):
                    found = FoundFile(source.root, found.path, f"{relative.as_posix()}/{found.doc_id}")
                yield found
        else:
            yield FoundFile(root=source.root, path=path, doc_id=relative.as_posix())


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _walk(
    root: Path,
    folder: Path,
    relative: PurePosixPath,
    selection: Selection,
    report: WalkReport,
    inside: set[tuple[int, int]],
    skipped: set[tuple[int, int]],
) -> Iterator[FoundFile | FileProblem]:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as err:
        yield FileProblem(str(folder), f"cannot list the folder: {_os_reason(err)}")
        return
    for entry in entries:
        path, rel = folder / entry.name, relative / entry.name
        if entry.name.startswith(".") and not selection.hidden:
            report.hidden += 1
            continue
        try:
            is_dir = entry.is_dir()  # follows a symlink
            is_file = not is_dir and entry.is_file()
        except OSError as err:
            yield FileProblem(str(path), _os_reason(err))
            continue
        if is_dir:
            if selection.excluded(rel):
                continue
            try:
                identity = _identity(path)
            except OSError as err:
                yield FileProblem(str(path), _os_reason(err))
                continue
            if identity in skipped:
                continue
            if identity in inside:
                yield FileProblem(str(path), "symlink loop: a link back to a folder it is inside of")
                continue
            yield from _walk(root, path, rel, selection, report, inside | {identity}, skipped)
        elif is_file:
            if selection.wanted(rel):
                yield FoundFile(root=root, path=path, doc_id=rel.as_posix())
            elif not selection.excluded(rel):
                suffix = rel.suffix.lower() or "(no suffix)"
                report.other_types[suffix] = report.other_types.get(suffix, 0) + 1
        elif entry.is_symlink() and selection.wanted(rel):
            yield FileProblem(str(path), _broken_link_reason(path))


def _broken_link_reason(path: Path) -> str:
    try:
        path.stat()
    except OSError as err:
        return _os_reason(err)
    return "not a regular file"


def _os_reason(err: OSError) -> str:
    """An OS error in the words a user needs (no errno numbers, no repeated file name)."""
    if err.errno == errno.ELOOP:
        return "symlink loop: the link leads back to itself"
    if isinstance(err, FileNotFoundError):
        return "vanished during the run (listed, then gone), or a symlink whose target is missing"
    if isinstance(err, PermissionError):
        return "permission denied"
    return err.strerror or str(err)


@dataclass(frozen=True)
class FileBytes:
    """A file's content as read, with what it was read from: its size, modification time and SHA-256."""

    data: bytes
    size: int
    modified_ns: int
    sha256: str


def read_file(found: FoundFile, max_size: int) -> FileBytes:
    """The file's bytes, refused when it is over ``max_size``, empty, vanished, unreadable, or changed while read."""
    label = found.label
    try:
        before = os.stat(found.path)
        if before.st_size > max_size:
            raise FileProblem(
                label, f"{before.st_size:,} bytes, over the limit of {max_size:,} (raise it with --max-file-size)"
            )
        with open(found.path, "rb") as fh:
            data = fh.read(before.st_size + 1)  # one byte more than stat said: a file that grew is caught below
        after = os.stat(found.path)
    except OSError as err:
        raise FileProblem(label, _os_reason(err)) from None
    if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size) or len(data) != after.st_size:
        raise FileProblem(label, "changed while it was being read; run again when it is written")
    if not data.strip():
        raise FileProblem(label, "empty file" if not data else "holds only whitespace")
    return FileBytes(data, len(data), after.st_mtime_ns, hashlib.sha256(data).hexdigest())


def unchanged_since_read(found: FoundFile, read: FileBytes) -> bool:
    """Whether the file still has the size and modification time it was read with."""
    try:
        st = os.stat(found.path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (read.size, read.modified_ns)
