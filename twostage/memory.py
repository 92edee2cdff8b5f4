"""Collections that live only as long as their engine (``Engine.in_memory()``), and saving one to a directory.

A collection is SQLite plus a FAISS file; rather than a second storage path kept in step with the first, an
in-memory collection is an ordinary one in a private temporary directory (in RAM where ``/dev/shm`` is writable),
removed when the engine closes or is garbage-collected. Saving copies it through SQLite's backup API (a consistent
snapshot even with the write-ahead log) into a sibling directory, renamed into place once complete.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import weakref
from pathlib import Path
from typing import Any

from twostage.indexes.collection import DOCUMENTS, MANIFEST, VECTORS, Collection

from .errors import UsageError

#: the collection files a save copies as they are (the SQLite file goes through the backup API)
_COPIED = (MANIFEST, VECTORS, VECTORS + ".json")
#: where temporary collections go first: RAM-backed on Linux
_RAM = Path("/dev/shm")


class TemporaryHome:
    """A private directory for one in-memory collection, deleted by :meth:`cleanup` or when its owner is collected."""

    def __init__(self) -> None:
        parent = _RAM if _RAM.is_dir() and os.access(_RAM, os.W_OK) else None
        #: where the collection goes (inside the private directory, which stays empty of anything else)
        self.path = Path(tempfile.mkdtemp(prefix="twostage-memory-", dir=parent)) / "collection"
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path.parent, True)

    def adopt(self, owner: Any) -> None:
        """Tie the directory's lifetime to ``owner`` (the engine) instead of this object."""
        self._finalizer.detach()
        self._finalizer = weakref.finalize(owner, shutil.rmtree, self.path.parent, True)

    def cleanup(self) -> None:
        """Delete the directory now (at most once)."""
        self._finalizer()


def save_collection(collection: Any, target: str | Path, *, overwrite: bool = False) -> Path:
    """Copy committed ``collection`` (a single-directory one) to ``target``, which must not hold a collection unless
    ``overwrite``: built beside it and renamed into place, so an interrupted save leaves no half collection."""
    if not isinstance(collection, Collection):
        raise UsageError("only a single-directory collection can be saved (a sharded one is already on disk)")
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UsageError(f"cannot save to {target}: it exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        if not Collection.exists(target):
            raise UsageError(f"cannot save to {target}: the directory holds other files; choose an empty or new one")
        if not overwrite:
            raise UsageError(f"cannot save to {target}: it already holds a collection (pass overwrite=True)")
    if target.resolve() == collection.path.resolve():
        raise UsageError(f"cannot save a collection onto itself ({target})")
    collection.commit()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        for name in _COPIED:
            if (collection.path / name).is_file():
                shutil.copy2(collection.path / name, staging / name)
        _backup(collection.path / DOCUMENTS, staging / DOCUMENTS)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _backup(source: Path, destination: Path) -> None:
    """A consistent copy of SQLite file ``source`` (the write-ahead log folded in), as one file without a log."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(destination)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    finally:
        dst.close()
        src.close()
