"""Open text files that may be gzip-compressed, so every reader and writer accepts `.gz` transparently.

Readers go through `iter_lines`, which reads UTF-8 (a leading byte-order mark dropped, as `utf-8-sig` does) and turns
bytes that are not UTF-8, a corrupt gzip stream or an unreadable file into one `EvalInputError` naming the file and
line, in the words the corpus reader uses (`indexes.readers`)."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from twostage.eval.errors import EvalInputError

#: what `surrogateescape` makes of a byte that is not UTF-8 (strict UTF-8 never decodes to these code points)
_ESCAPED = re.compile("[\udc80-\udcff]")


def open_text(path: str | Path, mode: str = "r") -> IO[str]:
    """Open `path` as UTF-8 text ("r" or "w"); a name ending in `.gz` is read or written through gzip.

    Reading decodes with `utf-8-sig` (a leading BOM is not part of the first line) and `surrogateescape`, so a
    byte that is not UTF-8 arrives as a code point in U+DC80..U+DCFF: read through `iter_lines`, which reports it."""
    path = Path(path)
    if mode == "r":
        options: dict[str, Any] = {"encoding": "utf-8-sig", "errors": "surrogateescape", "newline": ""}
    else:
        options = {"encoding": "utf-8", "newline": ""}
    if path.suffix == ".gz":
        return cast(IO[str], gzip.open(path, mode + "t", **options))
    return open(path, mode, **options)


def os_reason(err: OSError) -> str:
    """The words of an OSError without its repeated file name: `No such file or directory`."""
    return err.strerror or str(err) or type(err).__name__


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its line ending) for every line of a UTF-8 text file (`.gz`: gzip); EvalInputError
    naming the file (and line) for bytes that are not UTF-8, a corrupt or truncated gzip stream, or a file that
    cannot be opened."""
    number = 0
    try:
        with open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                bad = _ESCAPED.search(line)
                if bad:
                    at = len(line[: bad.start()].encode("utf-8", "surrogateescape")) + 1
                    byte = ord(bad.group()) - 0xDC00
                    raise EvalInputError(
                        f"not valid UTF-8 (byte 0x{byte:02x} at byte {at} of the line)", path=path, line=number
                    )
                yield number, line
    except FileNotFoundError:
        raise EvalInputError("no such file", path=path) from None
    except IsADirectoryError:
        raise EvalInputError("is a directory, not a file", path=path) from None
    except (OSError, EOFError, zlib.error) as err:  # unreadable, or a corrupt / truncated gzip stream
        reason = os_reason(err) if isinstance(err, OSError) else str(err) or type(err).__name__
        raise EvalInputError(
            f"cannot read the file: {reason}", path=path, line=number + 1 if number else None
        ) from None


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for each non-blank line of a JSONL file; bad JSON names its line."""
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"invalid JSON ({exc.msg})", path=path, line=number) from None
        yield number, value
