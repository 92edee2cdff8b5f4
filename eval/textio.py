"""Open text files that may be gzip-compressed, so every reader and writer accepts `.gz` transparently."""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from twostage.eval.errors import EvalInputError


def open_text(path: str | Path, mode: str = "r") -> IO[str]:
    """Open `path` as UTF-8 text ("r" or "w"); a name ending in `.gz` is read or written through gzip."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for each non-blank line of a JSONL file; bad JSON names its line."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalInputError(f"invalid JSON ({exc.msg})", path=path, line=number) from None
