"""The write path's bounded pipeline: ordered worker threads, one per stage, each with a queue of one step.

``Engine.add`` runs three stages at once: the caller reads and checks chunk i+2 and looks up what the collection
already holds, an encoder :class:`OrderedWriter` tokenises and encodes chunk i+1 (the runtime's own threads do the
arithmetic, outside the GIL), and a writer :class:`OrderedWriter` compresses chunk i's tokens and runs its
SQLite/FAISS write. Each queue holds one step, so a fast stage blocks instead of piling up encoded chunks: memory is
a few chunks whatever the collection's size.

Crash safety is the caller's unchanged: each write is one committed step, and steps run strictly in submission order.
After a failed write no later write runs; the error is raised to the caller at its next submit or on leaving the
``with`` block. When the caller itself fails, the writes already submitted still finish before its error propagates,
so what was committed is exactly a prefix of the chunks, as without the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

_STOP = object()


class OrderedWriter:
    """``with OrderedWriter() as write: write(step)`` — steps run one at a time in a background thread, in order;
    at most ``depth`` wait, so a fast producer blocks instead of piling up encoded chunks in memory."""

    def __init__(self, depth: int = 1, name: str = "twostage-writer"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        #: steps finished, in order (for reports and tests)
        self.done = 0

    def __enter__(self) -> OrderedWriter:
        self._thread.start()
        return self

    def __call__(self, step: Callable[[], object]) -> None:
        """Queue ``step`` after the ones before it; raises a previous step's error instead of queueing."""
        self._raise()
        self._queue.put(step)

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        if kind is None:
            self._raise()

    def _run(self) -> None:
        while True:
            step = self._queue.get()
            if step is _STOP:
                return
            if self._error is not None:  # a failed step: nothing after it is written
                continue
            try:
                step()
                self.done += 1
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
                self._error = error

    def _raise(self) -> None:
        if self._error is not None:  # stays set: later steps are skipped too
            raise self._error
