"""A micro-batcher: one worker thread owns the engine; searches that arrive together share one encoder/rerank pass.

The engine (and its SQLite connection) lives in a single dedicated thread. Requests become jobs on a queue:

* search jobs that arrive within ``window_s`` of the first one, and share their search request's options,
  go through :meth:`Engine.search_many` together (at most ``max_batch_queries`` queries per pass);
* write jobs (add, delete) end the current batch and run alone, so a search never runs concurrently
  with a write and always sees a consistent collection; a search submitted after a write was
  acknowledged sees that write;
* read jobs (get, info) run between batches, like writes, but do not end a batch.

Callers get a :class:`concurrent.futures.Future`; async code awaits it with :func:`asyncio.wrap_future`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .search_request import SearchRequest

log = logging.getLogger("twostage.batcher")


@dataclass
class _SearchJob:
    queries: list[str]
    request: SearchRequest
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> str:
        """Jobs with equal keys can share one ``search_many`` pass."""
        return self.request.key()


@dataclass
class _CallJob:
    fn: Callable[[Any], Any]
    write: bool
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)


_STOP = object()


class WorkerStopped(RuntimeError):
    """The engine worker is not running (the server is shutting down, or opening the engine failed)."""


@dataclass
class BatcherStats:
    """What the worker did: passes through ``search_many`` and how many queries each carried."""

    batches: int = 0
    batched_queries: int = 0
    max_batch_size: int = 0
    writes: int = 0
    sizes: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "queries": self.batched_queries,
            "max_batch_size": self.max_batch_size,
            "mean_batch_size": round(self.batched_queries / self.batches, 3) if self.batches else 0.0,
            "writes": self.writes,
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class Batcher:
    """Owns an engine in one worker thread and serves searches in micro-batches, writes in between."""

    def __init__(
        self,
        engine_factory: Callable[[], Any],
        *,
        window_s: float = 0.005,
        max_batch_queries: int = 32,
        on_open: Callable[[Any], None] | None = None,
    ):
        self._factory = engine_factory
        self._on_open = on_open
        self.window_s = window_s
        self.max_batch_queries = max(1, max_batch_queries)
        self._queue: queue.Queue = queue.Queue()
        self._held: Any = None  # a job taken off the queue that must start the next round
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self.stats = BatcherStats()
        self._lock = threading.Lock()
        #: documents in the collection, refreshed after opening and after every write (cheap to read anywhere)
        self.documents = 0
        self.engine: Any = None

    # ----------------------------------------------------------------- life cycle
    def start(self, timeout: float | None = None) -> None:
        """Start the worker and open the engine inside it; re-raises the error if opening fails."""
        self._thread = threading.Thread(target=self._run, name="twostage-engine", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if self._open_error is not None:
            raise self._open_error

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.engine is not None

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued jobs, close the engine and stop the worker."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    # ----------------------------------------------------------------- submitting
    def search(self, queries: Sequence[str], request: SearchRequest | None = None, **options: Any) -> Future:
        """A future for ``engine.search_many(queries, request)`` (keyword ``options`` over ``request``, as
        ``Engine.search`` takes them), possibly answered in a batch with other callers."""
        job = _SearchJob(list(queries), SearchRequest.from_options(request, **options), Future())
        self._put(job)
        return job.future

    def call(self, fn: Callable[[Any], Any], *, write: bool = False) -> Future:
        """A future for ``fn(engine)``, run in the worker between batches; ``write=True`` for adds and deletes."""
        job = _CallJob(fn, write, Future())
        self._put(job)
        return job.future

    def _put(self, job: Any) -> None:
        if self._thread is None or not self._thread.is_alive():
            job.future.set_exception(WorkerStopped("the engine worker is not running"))
            return
        self._queue.put(job)

    # ----------------------------------------------------------------- worker
    def _run(self) -> None:
        try:
            self.engine = self._factory()
            if self._on_open is not None:
                self._on_open(self.engine)
            self.documents = len(self.engine.collection)
        except BaseException as err:  # reported to start()'s caller
            self._open_error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                job = self._held if self._held is not None else self._queue.get()
                self._held = None
                if job is _STOP:
                    break
                if isinstance(job, _CallJob):
                    self._run_call(job)
                else:
                    self._run_round(job)
        finally:
            try:
                self.engine.close()
            except Exception:  # pragma: no cover - closing is best effort at shutdown
                log.exception("closing the engine failed")

    def _run_round(self, first: _SearchJob) -> None:
        """Gather searches for up to ``window_s`` after the first one was queued, then run them grouped by key."""
        searches = [first]
        reads: list[_CallJob] = []
        total = len(first.queries)
        deadline = first.enqueued + self.window_s
        while total < self.max_batch_queries:
            try:
                remaining = deadline - time.perf_counter()
                job = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job is _STOP or (isinstance(job, _CallJob) and job.write):
                self._held = job  # writes (and stop) wait for this batch, then run alone
                break
            if isinstance(job, _CallJob):
                reads.append(job)
            else:
                searches.append(job)
                total += len(job.queries)
        groups: dict[str, list[_SearchJob]] = {}
        for job in searches:
            groups.setdefault(job.key, []).append(job)
        for jobs in groups.values():
            self._run_group(jobs)
        for read in reads:
            self._run_call(read)

    def _run_group(self, jobs: list[_SearchJob]) -> None:
        """One ``search_many`` pass for jobs sharing a key (split if over the batch size)."""
        batch: list[_SearchJob] = []
        size = 0
        for job in jobs:
            if batch and size + len(job.queries) > self.max_batch_queries:
                self._search_batch(batch)
                batch, size = [], 0
            batch.append(job)
            size += len(job.queries)
        if batch:
            self._search_batch(batch)

    def _search_batch(self, jobs: list[_SearchJob]) -> None:
        first = jobs[0]
        queries = [q for job in jobs for q in job.queries]
        try:
            results = self.engine.search_many(queries, first.request)
        except Exception as err:
            if len(jobs) == 1:
                _fail(first.future, err)
                return
            for job in jobs:  # one bad job must not fail its neighbours: retry each alone
                self._search_batch([job])
            return
        self._count_documents()  # another process may have written since: /health follows it
        with self._lock:
            self.stats.batches += 1
            self.stats.batched_queries += len(queries)
            self.stats.max_batch_size = max(self.stats.max_batch_size, len(queries))
            self.stats.sizes[len(queries)] += 1
        start = 0
        for job in jobs:
            end = start + len(job.queries)
            _resolve(job.future, results[start:end])
            start = end

    def _run_call(self, job: _CallJob) -> None:
        try:
            result, error = job.fn(self.engine), None
        except Exception as err:
            result, error = None, err
        if job.write:
            with self._lock:
                self.stats.writes += 1
        self._count_documents()  # before answering, so that the caller reads the new count
        if error is not None:
            _fail(job.future, error)
        else:
            _resolve(job.future, result)

    def _count_documents(self) -> None:
        """Refresh :attr:`documents` (a cheap check of the collection's generation unless another process wrote)."""
        try:
            self.documents = len(self.engine.collection)
        except Exception:  # pragma: no cover - a broken collection is reported by the request itself
            log.exception("counting documents failed")

    def stats_dict(self) -> dict[str, Any]:
        with self._lock:
            out = self.stats.to_dict()
        out.update(window_ms=self.window_s * 1000, max_batch_queries=self.max_batch_queries, queued=self._queue.qsize())
        return out


def _resolve(future: Future, value: Any) -> None:
    if future.set_running_or_notify_cancel():
        future.set_result(value)


def _fail(future: Future, err: BaseException) -> None:
    if future.set_running_or_notify_cancel():
        future.set_exception(err)
