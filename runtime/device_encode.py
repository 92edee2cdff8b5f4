"""Feeding an accelerator: length-bucketed large batches sized from free memory, halved on out-of-memory, under bf16
autocast, inputs from pinned host buffers and outputs copied back on a side stream while the next batch runs.

One code path for every device: on CUDA the copies are asynchronous (pinned memory, ``non_blocking``, a copy stream);
on the CPU the same steps are plain synchronous copies, which is how the tests drive it. Tokenisation happens ahead
of the model in worker processes (``runtime.tokenize_pool``). Used by the bi-encoder (:class:`DeviceEncoder`) and the
cross-encoder (:class:`DeviceScorer`) when they run on a GPU, or when given :class:`DeviceOptions` explicitly.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from twostage.runtime.tokenize_pool import Tokenized, TokenizerPool

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
#: share of the measured free memory one batch's activations may use (the rest: weights' workspace, fragmentation)
MEMORY_SHARE = 0.5
#: on the CPU, the most memory one batch may use when no limit is given
CPU_MEMORY_CAP = 2 << 30
#: the fewest pairs worth shipping to a tokeniser worker
MIN_PIECE = 128

#: a model step: padded int64 inputs on the device -> one float output row per input row
Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class DeviceMemoryError(RuntimeError):
    """A single input does not fit in the device's memory even alone; the message says how long it was."""


@dataclass(frozen=True)
class DeviceOptions:
    """How the device path batches: compute precision (``auto``: bf16 on a GPU with bf16, fp16 on one without, fp32
    on the CPU), the memory one batch may use (None: measured free memory; set it to test or to share a GPU), the most
    rows per batch, tokeniser worker processes (None: one per spare core, at most 8; 0: in this process), and texts
    per tokeniser job and per encode window."""

    precision: str = "auto"
    memory_limit: int | None = None
    max_batch: int = 4096
    workers: int | None = None
    piece: int = 2048
    window: int = 8192

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("max_batch", "piece", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.memory_limit is not None and self.memory_limit < 1:
            raise ValueError(f"memory_limit must be a positive number of bytes, got {self.memory_limit}")


def wanted(device: str | torch.device, options: DeviceOptions | None) -> bool:
    """Whether a stage on ``device`` takes the device path: always on a GPU, on the CPU only when asked to."""
    return options is not None or torch.device(device).type == "cuda"


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means fp32 (no autocast)."""
    if precision != "auto":
        return _DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: ``torch.cuda.mem_get_info`` on a GPU, available RAM (capped) on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return min(int(psutil.virtual_memory().available), CPU_MEMORY_CAP)
    except ImportError:
        return CPU_MEMORY_CAP


def bytes_per_token(config: Any, width: int, dtype: torch.dtype | None) -> int:
    """Peak activation bytes per padded token of a BERT-style encoder at sequence length ``width``: a layer's hidden
    states, q/k/v, the feed-forward inner states and one attention row per head (layers run one after another)."""
    hidden = int(getattr(config, "hidden_size", 768))
    inner = int(getattr(config, "intermediate_size", 4 * hidden))
    heads = int(getattr(config, "num_attention_heads", 12))
    size = 4 if dtype is None else 2
    return size * (8 * hidden + 2 * inner + 2 * heads * width) + 4 * hidden  # + the fp32 copy of the output


def buckets(lengths: np.ndarray, budget: int, max_batch: int) -> list[np.ndarray]:
    """Row numbers in batches, longest first, each padded to its longest row with rows x width <= ``budget`` tokens
    (a row longer than the budget is a batch alone) and at most ``max_batch`` rows."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    out, start = [], 0
    while start < len(order):
        width = max(int(lengths[order[start]]), 1)
        rows = max(1, min(max_batch, budget // width))
        out.append(order[start : start + rows])
        start += rows
    return out


def pad(tokens: Tokenized, rows: np.ndarray, pad_id: int, *, types: bool, left: bool = False) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` (and ``token_type_ids`` when ``types``) for ``rows``, padded to the longest."""
    lengths = tokens.lengths[rows]
    width = int(lengths.max())
    columns = np.arange(width)[None, :]
    offset = (width - lengths)[:, None] if left else 0
    mask = (columns >= offset) & (columns < offset + lengths[:, None])
    source = np.clip(tokens.starts[rows][:, None] + columns - offset, 0, max(len(tokens.ids) - 1, 0))
    batch = {
        "input_ids": np.where(mask, tokens.ids[source], pad_id).astype(np.int64),
        "attention_mask": mask.astype(np.int64),
    }
    if types:
        batch["token_type_ids"] = np.where(mask, tokens.type_ids[source], 0).astype(np.int64)
    return batch


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class DeviceRunner:
    """Runs one model over tokenised inputs on one device, in memory-sized batches, outputs back in input order.

    ``memory_limit`` (or the measured free memory) sets the token budget per batch; an out-of-memory error halves it
    for the rest of this runner's life and the failing batch is split and retried."""

    def __init__(self, device: str | torch.device, options: DeviceOptions, config: Any):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.options = options
        self.config = config
        self.dtype = autocast_dtype(self.device, options.precision)
        self.cuda = self.device.type == "cuda"
        #: tokens per batch after out-of-memory back-offs (None: none yet)
        self.cap: int | None = None
        #: out-of-memory errors survived, and the batches run, since creation
        self.backoffs = 0
        self.batches = 0
        self._copy_stream: Any = torch.cuda.Stream(self.device) if self.cuda else None

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def budget(self, width: int) -> int:
        """Padded tokens one batch may hold: the memory limit (or free memory) over the cost per token."""
        memory = self.options.memory_limit or int(free_memory(self.device) * MEMORY_SHARE)
        budget = max(1, memory // bytes_per_token(self.config, width, self.dtype))
        return min(budget, self.cap) if self.cap is not None else budget

    def run(
        self, tokens: Tokenized, forward: Forward, out: np.ndarray, *, pad_id: int, types: bool, left: bool = False
    ) -> None:
        """``out[i] = forward(row i)`` for every row of ``tokens``, batched longest first."""
        if not len(tokens):
            return
        work = deque(buckets(tokens.lengths, self.budget(int(tokens.lengths.max())), self.options.max_batch))
        pending: deque[tuple[np.ndarray, torch.Tensor, Any]] = deque()
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            while work:
                rows = work.popleft()
                try:
                    result = forward(self._inputs(pad(tokens, rows, pad_id, types=types, left=left)))
                except Exception as error:  # noqa: BLE001 - only out-of-memory is handled; the rest re-raised
                    if not _is_oom(error):
                        raise
                    work.extendleft(reversed(self._split(tokens, rows, error)))
                    continue
                self.batches += 1
                pending.append((rows, *self._to_host(result)))
                if len(pending) > 1:  # the previous batch's copy overlapped this batch's compute
                    self._drain(pending.popleft(), out)
        while pending:
            self._drain(pending.popleft(), out)

    def _split(self, tokens: Tokenized, rows: np.ndarray, error: BaseException) -> list[np.ndarray]:
        """After an out-of-memory error on ``rows``: halve the budget and cut ``rows`` into batches that fit it."""
        width = int(tokens.lengths[rows].max())
        if len(rows) == 1:
            raise DeviceMemoryError(
                f"one input of {width} tokens does not fit in {self.device} memory even alone "
                f"({type(error).__name__}); lower the model's max_seq_length or free the device"
            ) from None
        self.cap = max(1, len(rows) * width // 2)
        self.backoffs += 1
        if self.cuda:
            torch.cuda.empty_cache()
        return [rows[part] for part in buckets(tokens.lengths[rows], self.cap, self.options.max_batch)]

    def _inputs(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Host arrays onto the device: from pinned memory without blocking on a GPU, as they are on the CPU."""
        tensors = {key: torch.from_numpy(array) for key, array in batch.items()}
        if not self.cuda:
            return tensors
        return {key: t.pin_memory().to(self.device, non_blocking=True) for key, t in tensors.items()}

    def _to_host(self, result: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Start copying ``result`` into pinned host memory on the copy stream; returns the host tensor and an event."""
        result = result.float()
        if not self.cuda:
            return result, None
        self._copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._copy_stream):
            host = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
            host.copy_(result, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
        result.record_stream(self._copy_stream)
        return host, done

    @staticmethod
    def _drain(item: tuple[np.ndarray, torch.Tensor, Any], out: np.ndarray) -> None:
        rows, host, done = item
        if done is not None:
            done.synchronize()
        out[rows] = host.numpy().reshape(len(rows), *out.shape[1:])


class DeviceEncoder:
    """Sentence vectors of a transformer + pooling SentenceTransformer through the device path (see the module)."""

    def __init__(self, st_model: Any, device: str | torch.device, options: DeviceOptions | None = None):
        options = options or DeviceOptions()
        self.model = st_model
        self.pool = TokenizerPool(
            st_model.tokenizer, limit=st_model.max_seq_length, workers=options.workers, piece=options.piece
        )
        self.runner = DeviceRunner(device, options, st_model[0].auto_model.config)
        self.options = options

    @property
    def precision(self) -> str:
        return self.runner.precision

    def encode(self, texts: Sequence[str], *, prompt: str, normalize: bool) -> tuple[np.ndarray, list[int]]:
        """Vectors (float32, input order) for ``texts`` and the positions of texts cut at the length limit; windows of
        texts are tokenised by the workers while the previous window runs on the device."""
        if self.pool.limit != self.model.max_seq_length:  # max_seq_length was changed after loading
            self.pool.close()
            self.pool = TokenizerPool(
                self.model.tokenizer,
                limit=self.model.max_seq_length,
                workers=self.options.workers,
                piece=self.options.piece,
            )
        prompted = [prompt + t for t in texts] if prompt else list(texts)
        out = np.empty((len(texts), self.model.get_embedding_dimension()), dtype=np.float32)
        cut: list[int] = []
        tokenizer = self.model.tokenizer
        forward = _sentence_forward(self.model, normalize)
        size = self.options.window
        for start, tokens in zip(range(0, len(prompted), size), self.pool.stream(_windows(prompted, size))):
            self.runner.run(
                tokens,
                forward,
                out[start : start + size],
                pad_id=tokenizer.pad_token_id or 0,
                types=False,
                left=tokenizer.padding_side == "left",
            )
            cut.extend(start + int(i) for i in np.flatnonzero(tokens.cut))
        return out, cut

    def close(self) -> None:
        self.pool.close()


class DeviceScorer:
    """Cross-encoder logits (first column) for (query, passage) pairs through the device path; all pairs of a query,
    at any candidate depth that fits the memory budget, run as one batch."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_length: int,
        device: str | torch.device,
        options: DeviceOptions | None = None,
    ):
        options = options or DeviceOptions()
        self.model = model
        self.tokenizer = tokenizer
        self.pool = TokenizerPool(tokenizer, limit=max_length, workers=options.workers, piece=options.piece)
        self.runner = DeviceRunner(device, options, model.config)

    @property
    def precision(self) -> str:
        return self.runner.precision

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """One float32 logit per pair, in input order, and how many pairs were cut at the length limit."""
        pairs = list(zip(queries, texts))
        # one query's candidates are spread over all workers (latency); below MIN_PIECE pairs each, here
        tokens = self.pool.tokenize(pairs, piece=max(MIN_PIECE, -(-len(pairs) // max(1, self.pool.workers))))
        out = np.zeros(len(tokens), dtype=np.float32)
        types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ("token_type_ids",))
        self.runner.run(
            tokens,
            lambda batch: self.model(**batch).logits[:, 0],
            out,
            pad_id=self.tokenizer.pad_token_id or 0,
            types=types,
            left=self.tokenizer.padding_side == "left",
        )
        return out, int(tokens.cut.sum())

    def close(self) -> None:
        self.pool.close()


def _windows(texts: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(texts), size):
        yield texts[start : start + size]


def _sentence_forward(st_model: Any, normalize: bool) -> Forward:
    """The SentenceTransformer's modules (transformer, pooling, dense, normalise) on one padded batch."""

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        vectors = st_model(batch)["sentence_embedding"].float()
        return F.normalize(vectors, p=2, dim=1) if normalize else vectors

    return forward
