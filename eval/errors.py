"""Errors raised on bad evaluation input, with the file, line and field that caused them."""

from __future__ import annotations

from os import PathLike


class EvalInputError(ValueError):
    """A qrels, run, queries or corpus file (or an in-memory equivalent) that cannot be used as given."""

    def __init__(
        self,
        message: str,
        *,
        path: str | PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        where = [
            part
            for part in (
                self.path,
                None if line is None else f"line {line}",
                None if field is None else f"field {field}",
            )
            if part
        ]
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class DatasetError(EvalInputError):
    """A dataset that cannot be found or loaded: missing folder or file, unknown format, unreachable hub."""
