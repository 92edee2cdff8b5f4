"""One writer at a time: an OS file lock (``fcntl.flock``) on ``writer.lock`` in the collection directory.

Every writing process (CLI ``index``/``add``/``delete``/``check --repair``, the server per write) holds it while it
changes the collection; the holder's pid and command are written into the file so that a second writer, after
waiting ``wait`` seconds, can say who holds it. The OS drops the lock when its holder dies (``kill -9`` included).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CollectionError

LOCK_FILE = "writer.lock"
#: seconds a writer waits for another one to finish before giving up (the CLI's ``--wait``)
DEFAULT_WAIT = 5.0


class LockBusy(CollectionError):
    """Another process holds the collection's writer lock."""


class ReadOnlyCollection(CollectionError):
    """The collection's directory cannot be written: reads work, writes do not."""


def holder_of(path: Path) -> str:
    """The pid and command written into a lock file by its holder, or 'unknown' when unreadable."""
    try:
        text = (path / LOCK_FILE).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "unknown"
    return text.replace("\n", " ")[:200] or "unknown"


class WriterLock:
    """The exclusive writer lock of one collection directory; re-entrant within one process (counted)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = DEFAULT_WAIT) -> None:
        """Take the lock, waiting up to ``wait`` seconds; LockBusy names the holder, ReadOnlyCollection a read-only place."""
        if self._fd is not None:
            self._depth += 1
            return
        try:
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ReadOnlyCollection(
                    f"{self.directory} is read-only ({err.strerror}): it can be searched but not changed"
                ) from None
            raise CollectionError(f"{self.directory}: cannot create {LOCK_FILE} ({err.strerror})") from None
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockBusy(
                        f"{self.directory} is being changed by another process ({holder_of(self.directory)}); "
                        f"waited {wait:g}s — try again when it has finished, or pass a longer --wait"
                    ) from None
                time.sleep(0.05)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}: {_command()}\n".encode("utf-8", "replace"))
        except OSError:
            pass  # the lock itself is held; the holder's name is only a courtesy to the next writer
        self._fd, self._depth = fd, 1

    def release(self) -> None:
        """Drop one level of the lock; the last release unlocks (the file stays, emptying it would race the next holder)."""
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def holding(self, wait: float = DEFAULT_WAIT) -> Iterator[WriterLock]:
        """The lock for the duration of a ``with`` block."""
        self.acquire(wait)
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _command() -> str:
    args = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(args)[:160]
