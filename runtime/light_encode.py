"""Passages encoded on the torch-free path (``runtime.light``): one inference gives each passage's pooled vector and,
when asked, its MaxSim token vectors and content token ids.

This is the write path on an exported backend: the ``tokenizers`` tokenizer (each text tokenised once, which also
says whether it was cut at the length limit), length-sorted batches cut into a multiple of the core count and
streamed through ``Runtime.map`` (pipelined on OpenVINO: the next batch is padded while the current ones run), then
the model's pooling in numpy. The token vectors are the same transformer outputs the pooled vector is made from, so
the stored tokens and the dense vector come from one backend and one forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from twostage.runtime.backends import physical_cores
from twostage.runtime.encode import batch_count, pad
from twostage.runtime.light import LightEncoder


@dataclass
class EncodedPassages:
    """One call's results, in input order: pooled vectors, positions cut at the length limit, and (when asked) each
    passage's content-token vectors (unit length, float16, what a token store keeps) and content token ids."""

    vectors: np.ndarray  # float32 (n, dimension)
    cut: list[int]
    tokens: list[np.ndarray] | None = None
    token_ids: list[np.ndarray] | None = None


def content_tokens(ids: np.ndarray, hidden: np.ndarray, special_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MaxSim's view of one text: its non-special tokens (all of them where none is left) as unit-length float16
    vectors, and the ids of its non-special tokens (what the collection counts for token document frequencies)."""
    content = ~np.isin(ids, special_ids)
    vectors = hidden[content if content.any() else slice(None)].astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors.astype(np.float16), ids[content]


def encode_passages(
    light: LightEncoder,
    texts: Sequence[str],
    *,
    prompt: str = "",
    batch_size: int = 32,
    normalize: bool = True,
    tokens: bool = False,
) -> EncodedPassages:
    """Pooled vectors of ``texts`` (``prompt`` prepended) and, with ``tokens``, their MaxSim tokens from the same
    forward pass. MaxSim reads passages without a prompt, so a prompted model's tokens take a second pass."""
    texts = list(texts)
    if tokens and prompt:
        first = encode_passages(light, texts, prompt=prompt, batch_size=batch_size, normalize=normalize)
        second = encode_passages(light, texts, batch_size=batch_size, normalize=normalize, tokens=True)
        return EncodedPassages(first.vectors, first.cut, second.tokens, second.token_ids)
    out = EncodedPassages(np.empty((len(texts), light.dimension), dtype=np.float32), [])
    if tokens:
        out.tokens, out.token_ids = [None] * len(texts), [None] * len(texts)  # type: ignore[list-item]
    if not texts:
        return out
    encodings = light.tokenizer.encode_batch([prompt + t for t in texts] if prompt else texts)
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    out.cut = [i for i, e in enumerate(encodings) if e.overflowing]
    order = np.array(sorted(range(len(ids)), key=lambda i: -len(ids[i])), dtype=np.int64)
    batches = np.array_split(order, batch_count(len(order), batch_size, physical_cores()))
    masks: list[np.ndarray] = []

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for rows in batches:
            batch = pad(ids, rows, light.pad_id)
            masks.append(batch["attention_mask"])
            yield batch

    special = np.asarray(light.special_ids, dtype=np.int64)
    for rows, hidden, mask in zip(batches, light.runtime.map(feeds()), masks):
        out.vectors[rows] = pool(hidden, mask, light.pooling)
        if tokens:
            for j, i in enumerate(rows):
                out.tokens[i], out.token_ids[i] = content_tokens(ids[i], hidden[j, : len(ids[i])], special)  # type: ignore[index]
    if normalize or light.normalize_module:
        out.vectors /= np.maximum(np.linalg.norm(out.vectors, axis=1, keepdims=True), 1e-12)
    return out


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """A padded batch's sentence vectors ``(batch, dim)`` as sentence-transformers' Pooling module makes them."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask[:, :, None].astype(np.float32)
    if mode == "max":
        return np.where(weights > 0, hidden, -1e9).max(axis=1)
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def count_cut(light: LightEncoder, texts: Sequence[str], prompt: str = "") -> int:
    """How many ``texts`` (``prompt`` prepended) the tokenizer cuts at the model's length limit; no inference."""
    if not texts:
        return 0
    return sum(bool(e.overflowing) for e in light.tokenizer.encode_batch([prompt + t for t in texts]))


def content_token_ids(light: LightEncoder, texts: Sequence[str]) -> list[np.ndarray]:
    """Per text, the token ids MaxSim keeps (cut as encoding cuts, special tokens dropped); tokenises only."""
    special = np.asarray(light.special_ids, dtype=np.int64)
    out = []
    for encoding in light.tokenizer.encode_batch(list(texts)) if texts else []:
        ids = np.asarray(encoding.ids, dtype=np.int64)
        out.append(ids[~np.isin(ids, special)])
    return out
