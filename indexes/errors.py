"""Errors the index layer raises; each names the file, line and field at fault so a user can fix the input."""

from __future__ import annotations


class CorpusError(ValueError):
    """Bad corpus input. ``str(err)`` reads like ``corpus.jsonl, line 7, field 'text': empty text``."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ", ".join(
            part
            for part in (
                str(path) if path else None,
                f"line {line}" if line is not None else None,
                f"field {field!r}" if field else None,
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class CollectionError(RuntimeError):
    """A collection directory that cannot be created, opened or used as asked (wrong model, bad manifest, ...)."""


class StorageError(CollectionError, OSError):
    """The collection's files cannot be read or written: a damaged database, a read-only place, a full disk.
    Also an OSError, so that code catching the OS's own error for a failed write still does."""
