"""Tokenisation in worker processes, ahead of the model: a fast (Rust) tokenizer over pieces of the input, in order.

Workers receive the tokenizer once, as its JSON, and import only ``tokenizers`` and numpy (never torch); each piece
comes back as flat int32 arrays (ids, token types) plus per-row lengths and a truncation flag. ``workers=0`` runs the
same function in this process, so the parallel result equals the serial one by construction (and by test).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Tokenized:
    """Token ids of many inputs, unpadded and concatenated: row ``i`` is ``ids[starts[i] : starts[i] + lengths[i]]``."""

    ids: np.ndarray  # int32, all rows back to back
    type_ids: np.ndarray  # int32, same layout (zeros for single texts)
    lengths: np.ndarray  # int64 per row
    cut: np.ndarray  # bool per row: cut at the length limit

    @property
    def starts(self) -> np.ndarray:
        return (
            np.concatenate(([0], np.cumsum(self.lengths)[:-1])).astype(np.int64) if len(self.lengths) else self.lengths
        )

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def concat(cls, parts: Sequence[Tokenized]) -> Tokenized:
        """The rows of ``parts``, in order, as one Tokenized."""
        if not parts:
            empty = np.zeros(0, dtype=np.int32)
            return cls(empty, empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "type_ids", "lengths", "cut")))


def load_backend(spec: str, limit: int | None) -> Any:
    """A ``tokenizers.Tokenizer`` from its JSON, unpadded and truncating at ``limit`` (longest first) when given."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(spec)
    tokenizer.no_padding()
    if limit:
        tokenizer.enable_truncation(int(limit), stride=0, strategy="longest_first", direction="right")
    else:
        tokenizer.no_truncation()
    return tokenizer


def tokenize(tokenizer: Any, inputs: Sequence[Any]) -> Tokenized:
    """Encode ``inputs`` (texts or pairs) with special tokens, as ``PreTrainedTokenizerFast(..., truncation=True)``."""
    encodings = tokenizer.encode_batch(list(inputs), add_special_tokens=True)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter((t for e in encodings for t in e.ids), dtype=np.int32, count=total)
    types = np.fromiter((t for e in encodings for t in e.type_ids), dtype=np.int32, count=total)
    cut = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(encodings))
    return Tokenized(ids, types, lengths, cut)


_WORKER_TOKENIZER: Any = None


def _init_worker(spec: str, limit: int | None) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the processes are the parallelism
    _WORKER_TOKENIZER = load_backend(spec, limit)


def _work(inputs: Sequence[Any]) -> Tokenized:
    return tokenize(_WORKER_TOKENIZER, inputs)


def default_workers() -> int:
    """Tokeniser processes by default: one per core left after the main process, at most 8."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, usable - 1))


class TokenizerPool:
    """Tokenises inputs in ``workers`` processes (started on first use, reused), pieces of ``piece`` inputs each.

    ``tokenizer`` is a transformers fast tokenizer (or a ``tokenizers.Tokenizer``); ``limit`` the model's token limit."""

    def __init__(self, tokenizer: Any, *, limit: int | None, workers: int | None = None, piece: int = 2048):
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not hasattr(backend, "encode_batch"):
            raise ValueError("the device encode path needs a fast (Rust) tokenizer")
        self.spec = backend.to_str()
        self.limit = limit
        self.workers = default_workers() if workers is None else max(0, int(workers))
        self.piece = max(1, int(piece))
        self._local = load_backend(self.spec, limit)
        self._executor: ProcessPoolExecutor | None = None

    def tokenize(self, inputs: Sequence[Any], piece: int | None = None) -> Tokenized:
        """All of ``inputs`` in input order, in pieces of ``piece`` (default the pool's) tokenised in parallel; no
        more than one piece is tokenised here, quicker than a round trip to a worker."""
        piece = piece or self.piece
        if self.workers == 0 or len(inputs) <= piece:
            return tokenize(self._local, inputs)
        return Tokenized.concat(list(self.stream([inputs], piece=piece)))

    def stream(
        self, groups: Iterable[Sequence[Any]], ahead: int | None = None, piece: int | None = None
    ) -> Iterator[Tokenized]:
        """One Tokenized per group, in order; while the caller uses one group, later pieces are being tokenised
        (up to ``ahead`` pieces in flight, default two per worker)."""
        if self.workers == 0:
            for group in groups:
                yield tokenize(self._local, group)
            return
        executor = self._pool()
        ahead = ahead or 2 * self.workers
        flight: deque[tuple[bool, Future]] = deque()  # (last piece of its group?, future)
        parts: list[Tokenized] = []
        for inputs, last in self._pieces(groups, piece or self.piece):
            flight.append((last, executor.submit(_work, inputs)))
            while flight and (len(flight) >= ahead or flight[0][1].done()):
                last_done, future = flight.popleft()
                parts.append(future.result())
                if last_done:
                    yield Tokenized.concat(parts)
                    parts = []
        while flight:
            last_done, future = flight.popleft()
            parts.append(future.result())
            if last_done:
                yield Tokenized.concat(parts)
                parts = []

    @staticmethod
    def _pieces(groups: Iterable[Sequence[Any]], size: int) -> Iterator[tuple[Sequence[Any], bool]]:
        """``(piece, is the last piece of its group)`` for every group; an empty group is one empty piece."""
        for group in groups:
            starts = range(0, len(group), size) or range(1)
            for n, start in enumerate(starts, start=1):
                yield group[start : start + size], n == len(starts)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # fork where there is one, as torch's DataLoader workers do: no re-import of the caller's main module,
            # and children only run the Rust tokenizer (never torch or CUDA, which must not cross a fork)
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_worker, initargs=(self.spec, self.limit)
            )
        return self._executor

    def close(self) -> None:
        """Stop the worker processes (a later call starts them again)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
