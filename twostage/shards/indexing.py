"""Indexing on Ray: Ray Data over a pool of encoder actors, the driver the one writer of every shard.

The driver writes each encoded batch through ``Collection.upsert`` (committed to SQLite at once, FAISS written on
commit), so a crash or a killed worker costs at most the batches in flight, and a re-run skips every committed
document. Documents are checked and reported by the engine's own ingest steps (``twostage.ingest``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from twostage.engine import Engine
from twostage.indexes.documents import Document
from twostage.indexes.errors import CollectionError
from twostage.ingest.documents import checked_stream
from twostage.ingest.passages import SplitBatch, splitter_for
from twostage.ingest.writes import AddReport, changed_documents, chunks
from twostage.runtime.config import RuntimeConfig

from .cluster import connect

log = logging.getLogger(__name__)

#: documents read, checked against what is committed, and sent through one Ray Data pipeline at a time
WINDOW = 65536
#: a window whose pipeline fails (a node or actor lost for good) is retried from what was committed this often
WINDOW_ATTEMPTS = 3


class EncoderActor:
    """One bi-encoder per actor (a Ray Data map_batches class): text batches in, vectors (and MaxSim tokens) out."""

    def __init__(self, model: str, fingerprint: str, runtime: RuntimeConfig, backend: str, tokens: bool):
        from twostage.retriever.biencoder import BiEncoder

        device, _ = runtime.placement()
        self.encoder = BiEncoder(
            model, device=device, batch_size=runtime.batch_size, backend=backend, threads=runtime.threads
        )
        if self.encoder.fingerprint != fingerprint:
            raise CollectionError(
                f"the bi-encoder {model!r} on this worker has fingerprint "
                f"{self.encoder.fingerprint[:12]}, not the collection's {fingerprint[:12]}"
            )
        self.tokens = tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from twostage.reranker.maxsim import encode_with_tokens

        texts = [str(t) for t in batch["text"]]
        out: dict[str, Any] = {"row": batch["row"]}
        hits = np.zeros(len(texts), dtype=np.int64)
        if self.tokens:
            out["embedding"], tokens = encode_with_tokens(self.encoder, texts)
            # ragged per-passage arrays travel as bytes plus their token counts
            out["tokens"] = np.array(
                [np.ascontiguousarray(t, dtype=np.float16).tobytes() for t in tokens], dtype=object
            )
            out["n_tokens"] = np.array([len(t) for t in tokens], dtype=np.int64)
        else:
            encoded = self.encoder.encode_documents(texts)
            out["embedding"] = encoded.embeddings
            hits[:1] = encoded.cache_hits  # the batch's count, carried by its first row
        out["cache_hits"] = hits
        out["truncated"] = np.array([self.encoder.count_truncated([t]) for t in texts], dtype=np.int64)
        return out


def index_distributed(
    documents: Iterable[Document | Mapping[str, Any]],
    directory: str | Path,
    *,
    address: str,
    shards: int,
    actors: int | None = None,
    model: str,
    index_type: str = "auto",
    overwrite: bool = False,
    store_tokens: bool | str = False,
    token_pool: float | None = None,
    runtime: RuntimeConfig | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[AddReport, int]:
    """Build (or resume) a sharded collection, encoding on ``actors`` Ray actors (default: one per cluster CPU, or per
    GPU with ``--device cuda``). Returns the report and the collection's final size."""
    ray = connect(address)
    runtime = runtime or RuntimeConfig()
    engine = Engine.create(
        directory,
        model=model,
        reranker=None,
        index_type=index_type,
        overwrite=overwrite,
        store_tokens=store_tokens,
        token_pool=token_pool,
        runtime=runtime,
        shards=shards,
    )
    with engine:
        collection = engine.collection
        device, _ = runtime.placement()
        per_actor = {"num_gpus": 1} if device.startswith("cuda") else {"num_cpus": 1}
        if actors is None:
            actors = max(1, int(ray.cluster_resources().get("GPU" if "num_gpus" in per_actor else "CPU", 1)))
        encode_args = dict(
            model=str(engine.encoder.source),  # the resolved model files, the same on every node
            fingerprint=collection.manifest.model_fingerprint,
            runtime=runtime,
            backend=engine.encoder.backend,
            tokens=collection.token_store is not None,
        )
        report = AddReport()
        started = time.perf_counter()
        for window in chunks(checked_stream(documents), WINDOW):
            _index_window(ray, engine, window, encode_args, per_actor, actors, runtime.batch_size, report, progress)
        collection.commit()
        report.seconds = time.perf_counter() - started
        return report, len(collection)


def _index_window(
    ray: Any,
    engine: Engine,
    window: list[Document],
    encode_args: dict[str, Any],
    per_actor: dict[str, int],
    actors: int,
    batch_size: int,
    report: AddReport,
    progress: Callable[[int], object] | None,
) -> None:
    """Encode and write the window's new or changed documents; a failed pipeline is rerun on what is still missing."""
    collection = engine.collection
    todo, existing = changed_documents(collection, window)
    replacing = {d.id for d in todo if d.id in existing}
    report.unchanged += len(window) - len(todo)
    if progress and len(window) > len(todo):
        progress(len(window) - len(todo))
    for attempt in range(1, WINDOW_ATTEMPTS + 1):
        try:
            _encode_and_write(
                ray, engine, todo, encode_args, per_actor, actors, batch_size, report, replacing, progress
            )
            return
        except ray.exceptions.RayError as err:
            if attempt == WINDOW_ATTEMPTS:
                raise
            log.warning("indexing pipeline failed (%s); retrying what is not yet committed", type(err).__name__)
            todo, _ = changed_documents(collection, todo)


def _encode_and_write(
    ray: Any,
    engine: Engine,
    todo: list[Document],
    encode_args: dict[str, Any],
    per_actor: dict[str, int],
    actors: int,
    batch_size: int,
    report: AddReport,
    replacing: set[str],
    progress: Callable[[int], object] | None,
) -> None:
    from twostage.reranker.maxsim import content_token_ids

    if not todo:
        return
    collection = engine.collection
    # longest first, as the single-process path sorts: a batch of similar lengths pads little (in corpus order an
    # actor's batches padded to their longest passage and ran at 0.65x of one process on the same single thread)
    # documents split as the single-process path splits them; their passages are what the actors encode
    split = SplitBatch(todo, engine.splitter or splitter_for(engine.encoder))
    texts = split.texts
    rows = [{"row": i, "text": texts[i]} for i in sorted(range(len(texts)), key=lambda i: -len(texts[i]))]
    blocks = max(1, min(len(rows) // batch_size, 4 * actors))
    encoded = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        EncoderActor,
        fn_constructor_kwargs=encode_args,
        batch_size=batch_size,
        batch_format="numpy",
        # all actors at once; after losing some (a node died) the pool goes on with the rest
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        **per_actor,
    )
    dim = collection.manifest.dimension
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy"):
        tokens = None
        if "tokens" in batch:
            tokens = [
                np.frombuffer(b, dtype=np.float16).reshape(int(n), dim)
                for b, n in zip(batch["tokens"], batch["n_tokens"])
            ]
        # rows come back in any order: a document is written once all of its passages are in
        complete = split.arrived(batch["row"], np.asarray(batch["embedding"], dtype=np.float32), tokens)
        report.truncated += int(batch["truncated"].sum())
        report.cache_hits += int(batch["cache_hits"].sum())
        if not complete:
            continue
        docs, vectors, tokens, splits, passage_texts = split.ready(complete)
        # token ids for MaxSim's IDF weights: tokenising only, done here with the driver's own tokenizer
        terms = (
            content_token_ids(engine.encoder, passage_texts)
            if getattr(collection, "token_df", None) is not None
            else None
        )
        collection.upsert(docs, vectors, tokens=tokens, terms=terms, splits=splits)
        report.passages += len(passage_texts)
        report.split += sum(len(s) > 1 for s in splits)
        replaced = sum(1 for d in docs if d.id in replacing)
        report.replaced += replaced
        report.added += len(docs) - replaced
        if progress:
            progress(len(docs))
