"""Document encoding on an exported runtime, without sentence-transformers' per-batch loop.

Each text is tokenised once (which also says whether it was cut at the length limit, so truncation is counted
without a second pass), length-sorted batches stream through ``Runtime.map`` (pipelined on OpenVINO: the next
batch is tokenised while the current ones run), and the model's own modules after the transformer (Pooling, Dense,
Normalize) turn token vectors into sentence vectors exactly as ``SentenceTransformer.encode`` would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from twostage.runtime.backends import Runtime, physical_cores

#: modules that may follow the transformer for this path to apply; anything else goes through ST's own encode
POOLING_MODULES = {"Pooling", "Dense", "Normalize"}


def supports(st_model: Any, prompt: str) -> bool:
    """True when the model is transformer + pooling-type modules (and a prompt, if any, is pooled like text)."""
    modules = list(st_model)
    rest = modules[1:]
    if not rest or any(type(m).__name__ not in POOLING_MODULES for m in rest):
        return False
    return not (prompt and any(not getattr(m, "include_prompt", True) for m in rest))


def token_ids(tokenizer: Any, texts: Sequence[str], limit: int | None) -> tuple[list[list[int]], list[int]]:
    """Token ids per text, cut to ``limit`` as the library cuts them, and the positions that were cut."""
    ids = list(
        tokenizer(
            list(texts), truncation=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )["input_ids"]
    )
    cut = [i for i, row in enumerate(ids) if limit and len(row) > limit]
    if cut:
        short = tokenizer(
            [texts[i] for i in cut],
            truncation=True,
            max_length=limit,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        for i, row in zip(cut, short):
            ids[i] = list(row)
    return ids, cut


def pad(
    ids: Sequence[Sequence[int] | np.ndarray], rows: Sequence[int] | np.ndarray, pad_id: int, left: bool = False
) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` for ``rows``, padded to the longest of them."""
    width = max(len(ids[i]) for i in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, i in enumerate(rows):
        span = slice(width - len(ids[i]), width) if left else slice(0, len(ids[i]))
        input_ids[j, span] = ids[i]
        mask[j, span] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def batch_count(n: int, batch_size: int, streams: int) -> int:
    """How many near-equal batches of at most ``batch_size`` to cut ``n`` inputs into: a multiple of ``streams`` (where
    ``n`` allows), so every core's stream gets work: 100 pairs on 2 cores run as 4 x 25, not 32+32+32+4."""
    streams = max(1, streams)
    return min(max(n, 1), streams * -(-n // (streams * batch_size)))


def encode(
    st_model: Any,
    runtime: Runtime,
    texts: Sequence[str],
    *,
    prompt: str,
    batch_size: int,
    normalize: bool,
) -> tuple[np.ndarray, list[int]]:
    """Sentence vectors (float32, input order) for ``texts`` and the positions of texts cut at the length limit."""
    import torch
    import torch.nn.functional as F

    tokenizer = st_model.tokenizer
    prompted = [prompt + t for t in texts] if prompt else list(texts)
    ids, cut = token_ids(tokenizer, prompted, st_model.max_seq_length)
    order = np.array(sorted(range(len(ids)), key=lambda i: -len(ids[i])), dtype=np.int64)
    batches = np.array_split(order, batch_count(len(order), batch_size, physical_cores()))
    masks: list[np.ndarray] = []
    pad_id = tokenizer.pad_token_id or 0
    left = tokenizer.padding_side == "left"

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for rows in batches:
            batch = pad(ids, rows, pad_id, left)
            masks.append(batch["attention_mask"])
            yield batch

    hidden = runtime.map(feeds())
    modules = list(st_model)[1:]
    out = np.empty((len(texts), st_model.get_embedding_dimension()), dtype=np.float32)
    with torch.inference_mode():
        for rows, states, mask in zip(batches, hidden, masks):
            features: dict[str, Any] = {
                "token_embeddings": torch.from_numpy(states),
                "attention_mask": torch.from_numpy(mask),
            }
            for module in modules:
                features = module(features)
            vectors = features["sentence_embedding"].float()
            if normalize:
                vectors = F.normalize(vectors, p=2, dim=1)
            out[rows] = vectors.numpy()
    return out, cut
