"""Documents written in committed chunks: each chunk's new or changed documents encoded and stored in its own SQLite
transaction (a crash loses at most one chunk's work), with a report of what was added, replaced or left alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from twostage.indexes.documents import Document
from twostage.indexes.protocols import CollectionLike
from twostage.reranker.maxsim import encode_for_store
from twostage.retriever.biencoder import EncodeResult
from twostage.runtime.blas import numpy_blas_single_threaded

from ..writer import OrderedWriter
from .documents import checked_stream, same_document
from .passages import Splitter, encoding_texts, splitter_for

#: documents encoded and committed to SQLite per step; a crash loses at most one step's work
ADD_CHUNK = 256
#: the same on the device encode path (a GPU), where a step must hold many large batches
DEVICE_ADD_CHUNK = 32768

T = TypeVar("T")


@dataclass
class AddReport:
    """What an ``add``/``index`` run did, for the CLI to print and tests to check."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    passages: int = 0  #: passages the added and replaced documents were split into (one per short document)
    split: int = 0  #: documents longer than the bi-encoder's window, split into several passages
    truncated: int = 0  #: passages still cut at the window (a single word longer than it)
    cache_hits: int = 0
    seconds: float = 0.0
    #: every document's id, in input order (generated ones for documents given as plain strings)
    ids: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        """Documents read from the input: added, replaced or unchanged."""
        return self.added + self.replaced + self.unchanged


@dataclass
class DeleteReport:
    """What a ``delete`` did: the ids removed, and those the collection did not hold."""

    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def add_documents(
    collection: CollectionLike,
    encoder: Any,
    documents: Iterable[Document | Mapping[str, Any] | str],
    progress: Callable[[int], None] | None = None,
    splitter: Splitter | None = None,
) -> AddReport:
    """Encode (with ``encoder``, a ``BiEncoder``) and store documents in committed steps, each split into passages
    that fit its window (``splitter``, else the encoder's own: ``ingest.passages``); an id already present is
    replaced, an unchanged one skipped. A list is checked whole before the first is stored."""
    splitter = splitter or splitter_for(encoder)
    report = AddReport()
    started = time.perf_counter()
    # on a GPU a chunk is large enough to keep the device busy. A bounded pipeline (twostage/writer.py): while this
    # thread reads and checks chunk i+2, the encoder thread encodes chunk i+1 and the writer thread stores chunk i
    # (its own SQLite transaction, in order)
    size = ADD_CHUNK if getattr(encoder, "device_encoder", None) is None else DEVICE_ADD_CHUNK
    with (
        numpy_blas_single_threaded(),  # the writer's token pooling beside the encoder: runtime/blas.py
        committed_even_on_error(collection),
        OrderedWriter() as write,
        OrderedWriter(name="twostage-encoder") as encode,
    ):
        for chunk in chunks(checked_stream(documents), size):
            report.ids.extend(doc.id for doc in chunk)
            todo, existing = changed_documents(collection, chunk)
            report.unchanged += len(chunk) - len(todo)
            replaced = sum(1 for d in todo if d.id in existing)
            report.replaced += replaced
            report.added += len(todo) - replaced
            if todo:
                encode(partial(_encode_chunk, collection, encoder, splitter, todo, report, write))
            if progress:
                progress(len(chunk))
    collection.commit()
    report.seconds = time.perf_counter() - started
    return report


def changed_documents(collection: CollectionLike, docs: list[Document]) -> tuple[list[Document], dict[str, Document]]:
    """The documents of ``docs`` the collection does not hold as they are (new or changed: what a write encodes), and
    what it holds of ``docs``, by id."""
    existing = {doc.id: doc for doc in collection.get([d.id for d in docs]) if doc is not None}
    return [d for d in docs if not same_document(existing.get(d.id), d)], existing


def _encode_chunk(
    collection: CollectionLike,
    encoder: Any,
    splitter: Splitter,
    todo: list[Document],
    report: AddReport,
    write: Callable[[Callable[[], object]], None],
) -> None:
    """The encoder thread's step: the changed documents split into passages, the passages' vectors (and tokens),
    handed to the writer thread."""
    splits = splitter.split_many(todo)
    texts = [text for doc, split in zip(todo, splits) for text in encoding_texts(doc, split)]
    tokens = terms = None
    if collection.token_store is None:
        encoded = encoder.encode_documents(texts)
    else:  # one forward pass gives both the passage vectors and the MaxSim token vectors
        store = encode_for_store(encoder, texts, token_ids=getattr(collection, "token_df", None) is not None)
        hits = encoder.through_cache(texts, store.embeddings)
        encoded = EncodeResult(store.embeddings, truncated=store.truncated, cache_hits=hits)
        tokens, terms = store.tokens, store.token_ids
    write(partial(collection.upsert, todo, encoded.embeddings, tokens=tokens, terms=terms, splits=splits))
    report.passages += len(texts)
    report.split += sum(len(split) > 1 for split in splits)
    report.truncated += encoded.truncated
    report.cache_hits += encoded.cache_hits


def delete_documents(collection: CollectionLike, ids: Iterable[Any]) -> DeleteReport:
    """Remove documents by id, committed; unknown ids are reported, not an error."""
    with committed_even_on_error(collection):
        result = collection.delete([str(i) for i in ids])
    collection.commit()
    return DeleteReport(deleted=list(result.deleted), missing=list(result.missing))


@contextmanager
def committed_even_on_error(collection: CollectionLike) -> Iterator[None]:
    """After a failed write, commit what SQLite already holds (best effort) so that the writer lock is let go:
    a long-running server must not keep other writers out after one bad request."""
    try:
        yield
    except BaseException:
        try:
            collection.commit()
        except Exception:  # the write's own error is the one to report
            pass
        raise


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
