"""Open text files that may be gzip-compressed, so every reader and writer accepts `.gz` transparently."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO


def open_text(path: str | Path, mode: str = "r") -> IO[str]:
    """Open `path` as UTF-8 text ("r" or "w"); a name ending in `.gz` is read or written through gzip."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")
