"""Second stage with a sentence-transformers cross-encoder: raw logits, length-sorted batches, truncation counted."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from twostage.runtime.autotune import measured, stage_backend
from twostage.runtime.backends import configure_threads, physical_cores
from twostage.runtime.device_encode import DeviceOptions, DeviceScorer, wanted
from twostage.runtime.encode import batch_count
from twostage.runtime.models import model_fingerprint

from .backends import cross_encoder_runtime
from .base import Reranker
from .resolve import DEFAULT_RERANKER, load_cross_encoder


class CrossEncoderReranker(Reranker):
    """Scores (query, passage) pairs jointly with a ``CrossEncoder``; scores are raw logits unless ``activation="sigmoid"``.

    Loading tries a local directory, the local HF cache, then the hub if reachable; failures raise ``RerankerLoadError``.
    Tokenisation is the library's (``truncation="longest_first"`` at the model's max length), so scores match
    ``CrossEncoder.predict(pairs, activation_fn=Identity())``. ``backend`` (see ``runtime.backends``) runs the same
    model through ONNX Runtime or OpenVINO instead of torch; "auto" picks the default.
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_RERANKER,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int | None = None,
        activation: Literal["none", "sigmoid"] = "none",
        backend: str | None = "torch",
        threads: int | None = None,
        device_options: DeviceOptions | None = None,
    ):
        if activation not in ("none", "sigmoid"):
            raise ValueError(f"activation must be 'none' or 'sigmoid', got {activation!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.name = str(model_name_or_path)
        self.batch_size = batch_size
        self.activation = activation
        self.truncated = 0
        self.cross_encoder = load_cross_encoder(self.name, device=device, max_length=max_length)
        self.model = self.cross_encoder.model.eval()
        self.tokenizer = self.cross_encoder.tokenizer
        self.max_length = _effective_max_length(self.tokenizer, self.model, max_length)
        self.device = next(self.model.parameters()).device
        configure_threads(threads)
        #: "auto" on the CPU is this machine's measured choice for this model (``runtime.autotune``)
        auto = measured(backend, str(self.device))  # fingerprinting is only needed to look the choice up
        self.backend = stage_backend(
            backend, str(self.device), "cross-encoder", model_fingerprint(self.cross_encoder) if auto else ""
        )
        self.runtime = cross_encoder_runtime(self.cross_encoder, self.backend, self.max_length)
        #: pairs through ``runtime.device_encode`` (all candidates of a query as one batch, bf16): on a GPU, or on the
        #: CPU when ``device_options`` are given
        self.device_scorer = (
            DeviceScorer(self.model, self.tokenizer, self.max_length, self.device, device_options)
            if self.backend == "torch"
            and getattr(self.tokenizer, "is_fast", False)
            and wanted(self.device, device_options)
            else None
        )
        self._lock = threading.Lock()

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """One float32 score per text, in input order."""
        return self.score_batch([query], [texts])[0]

    def score_batch(self, queries: Sequence[str], texts_per_query: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Scores for several queries in one length-sorted pass over all their pairs (batches concurrent queries)."""
        if len(queries) != len(texts_per_query):
            raise ValueError("score_batch needs one list of texts per query")
        pair_queries = [q for q, texts in zip(queries, texts_per_query) for _ in texts]
        pair_texts = [t for texts in texts_per_query for t in texts]
        flat = self._score_pairs(pair_queries, pair_texts)
        ends = np.cumsum([len(texts) for texts in texts_per_query])
        return list(np.split(flat, ends[:-1])) if len(ends) else []

    def _score_pairs(self, queries: list[str], texts: list[str]) -> np.ndarray:
        """Tokenise all pairs once, run them longest first in ``batch_size`` batches, scores back in input order."""
        scores = np.zeros(len(texts), dtype=np.float32)
        if not texts:
            return scores
        with self._lock:
            if self.device_scorer is not None:
                scores, truncated = self.device_scorer.score(queries, texts)
                self.truncated += truncated
                return _activate(scores, self.activation)
            features, truncated = self._tokenize(queries, texts)
            self.truncated += truncated
            order = np.argsort([-len(ids) for ids in features["input_ids"]], kind="stable")
            if self.runtime is not None:  # batches pipelined through the runtime (one stream per core on OpenVINO)
                batches = np.array_split(order, batch_count(len(order), self.batch_size, physical_cores()))
                outputs = self.runtime.map(self._pad(features, rows) for rows in batches)
                for rows, logits in zip(batches, outputs):
                    scores[rows] = logits[:, 0]
            else:
                for start in range(0, len(order), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    scores[rows] = self._logits(self._pad(features, rows))
        return _activate(scores, self.activation)

    def _logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """First logit per row from the torch model."""
        with torch.inference_mode():
            tensors = {key: torch.from_numpy(array).to(self.device) for key, array in batch.items()}
            return self.model(**tensors).logits.float()[:, 0].cpu().numpy()

    def _tokenize(self, queries: list[str], texts: list[str]) -> tuple[dict[str, list[list[int]]], int]:
        """Token ids for every pair, cut to ``max_length`` like the library does; also how many pairs were cut.

        Pairs are tokenised once without truncation; only the over-long ones are tokenised again with truncation.
        """
        full = self.tokenizer(queries, texts, truncation=False, padding=False, verbose=False)
        features = {key: list(full[key]) for key in ("input_ids", "token_type_ids", "attention_mask") if key in full}
        too_long = [i for i, ids in enumerate(features["input_ids"]) if len(ids) > self.max_length]
        if too_long:
            cut = self.tokenizer(
                [queries[i] for i in too_long],
                [texts[i] for i in too_long],
                truncation="longest_first",
                max_length=self.max_length,
                padding=False,
            )
            for key, rows in features.items():
                for i, row in zip(too_long, cut[key]):
                    rows[i] = row
        return features, len(too_long)

    def _pad(self, features: dict[str, list[list[int]]], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Pad the selected rows to their longest member (on the tokenizer's padding side) as int64 arrays."""
        width = max(len(features["input_ids"][i]) for i in rows)
        pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": self.tokenizer.pad_token_type_id}
        left = self.tokenizer.padding_side == "left"
        batch: dict[str, Any] = {}
        for key, all_rows in features.items():
            array = np.full((len(rows), width), pad_values.get(key, 0), dtype=np.int64)
            for j, i in enumerate(rows):
                row = all_rows[i]
                if left:
                    array[j, width - len(row) :] = row
                else:
                    array[j, : len(row)] = row
            batch[key] = array
        return batch


def _activate(scores: np.ndarray, activation: str) -> np.ndarray:
    """Raw logits, or their sigmoid."""
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)
    return scores


def _effective_max_length(tokenizer: Any, model: Any, requested: int | None) -> int:
    """The token limit pairs are cut at: the smallest of the request, the tokenizer's limit and the position table."""
    positions = getattr(model.config, "max_position_embeddings", None)
    limits = [requested, getattr(tokenizer, "model_max_length", None), positions]
    usable = [int(limit) for limit in limits if limit is not None and 0 < limit < 1_000_000]
    return min(usable) if usable else 512
