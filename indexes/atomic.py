"""Crash-safe file writes: write a temp file beside the target, fsync it, rename over the target, fsync the directory.

A reader (or a process restarted after ``kill -9``) therefore sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CollectionError

#: temp files are named ``.<target name>.<random>.tmp`` so a leftover one is easy to recognise and remove
TEMP_SUFFIX = ".tmp"


def atomic_write_with(path: str | Path, writer: Callable[[Path], object]) -> None:
    """Let ``writer`` fill a temp file in the target's directory, then durably rename it to ``path``."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as indented UTF-8 JSON, atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> Any:
    """The JSON document in ``path``; unreadable or invalid JSON is a CollectionError naming the file (and position)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise CollectionError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise CollectionError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or file creation in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temp_file(path: Path, target_names: set[str]) -> bool:
    """True for a temp file that :func:`atomic_write_with` left behind for one of ``target_names`` (after a crash)."""
    name = path.name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and any(name.startswith(f".{t}.") for t in target_names)
