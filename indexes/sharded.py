"""A sharded collection: a directory of N ordinary collections (``shard-000`` ...) and a top manifest ``shards.json``.

Each document lives in exactly one shard, chosen by a stable hash of its id (BLAKE2b of the UTF-8 id, mod N), so
``add``/``delete``/replace reach the owning shard from any process. Every shard is a complete collection that opens
and searches alone, with its own crash safety; a search asks every shard for its top-k (in threads) and merges them
exactly: the best k of the union, by score, ties broken by doc id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from . import intent
from .atomic import atomic_write_json
from .collection import DOCUMENTS, MANIFEST, Collection, DeleteResult
from .document_store import UpsertResult
from .documents import Document, Passage
from .errors import CollectionError
from .lock import LOCK_FILE, ReadOnlyCollection, WriterLock
from .passage_store import passage_rows, shard_upsert_arguments
from .routing import ROUTING, shard_name, shard_of
from .shard_manifest import SHARD_FORMAT_VERSION, SHARDS_MANIFEST, ShardManifest
from .sharded_passages import ShardedPassages
from .sharded_tokens import ShardedTokenDF, ShardedTokenStore
from .vector_store import by_score

log = logging.getLogger(__name__)


def merge_top_k(lists: Sequence[Sequence[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """The best ``k`` of several shards' ``(doc_id, score)`` lists: score descending, ties by doc id ascending.

    Exact: each shard returned its own top k, so the union holds the global top k."""
    return by_score([hit for hits in lists for hit in hits])[:k]


class ShardedCollection(ShardedPassages):
    """N collections behind the methods the engine uses on one: routed writes, merged searches, summed counts."""

    def __init__(self, path: Path, manifest: ShardManifest, shards: list[Collection]):
        self.path = path
        self.manifest = manifest
        self.shards = shards
        self.token_store = (
            ShardedTokenStore([s.token_store for s in shards])
            if all(s.token_store is not None for s in shards)
            else None
        )
        self.token_df = (
            ShardedTokenDF([s.token_df for s in shards if s.token_df is not None])
            if all(getattr(s, "token_df", None) is not None for s in shards)
            else None
        )
        #: True when any shard found its vector index behind SQLite (an interrupted run) and rebuilt it
        self.recovered = any(s.recovered for s in shards)
        #: the interrupted sharded write this process finished (``finish_interrupted``), if any
        self.finished: intent.Intent | None = None
        self._pool = ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="shard")
        #: the root's own writer lock: whoever writes ``intent.json`` holds it (a Ray-served collection's driver too)
        self._root_lock = WriterLock(path)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when ``path`` holds a sharded collection's top manifest."""
        return (Path(path) / SHARDS_MANIFEST).is_file()

    @classmethod
    def create(
        cls, path: str | Path, *, shards: int, overwrite: bool = False, **collection_args: Any
    ) -> ShardedCollection:
        """N empty shards (``collection_args`` as for :meth:`Collection.create`), then the top manifest, written last."""
        path = Path(path)
        if not isinstance(shards, int) or shards < 1:
            raise CollectionError(f"the shard count must be a positive integer (got {shards!r})")
        if Collection.exists(path):
            raise CollectionError(f"{path} holds an unsharded collection; index into a new directory to shard it")
        if cls.exists(path) and not overwrite:
            raise CollectionError(f"{path} already holds a sharded collection: open it, or pass overwrite=True")
        if path.is_dir():
            names = {SHARDS_MANIFEST, LOCK_FILE, intent.INTENT, intent.SPOOL}
            names |= {shard_name(i) for i in range(max(shards, _existing_count(path)))}
            foreign = sorted(
                p.name for p in path.iterdir() if p.name not in names and not p.name.startswith(f".{SHARDS_MANIFEST}.")
            )
            if foreign:
                raise CollectionError(
                    f"{path} is not empty and is not a sharded collection (it holds "
                    f"{', '.join(foreign[:3])}); choose a new or empty directory"
                )
            (path / SHARDS_MANIFEST).unlink(missing_ok=True)  # first: a half-replaced directory is not a collection
            intent.finish(path)  # an old collection's interrupted write must not be rolled into the new one
            for i in range(shards, _existing_count(path)):
                _remove_shard(path / shard_name(i))
        path.mkdir(parents=True, exist_ok=True)
        created: list[Collection] = []
        try:
            for i in range(shards):
                created.append(Collection.create(path / shard_name(i), overwrite=True, **collection_args))
        except BaseException:
            for shard in created:
                shard.close()
            raise
        first = created[0].manifest
        manifest = ShardManifest(
            format_version=SHARD_FORMAT_VERSION,
            shard_count=shards,
            routing=ROUTING,
            model_name=first.model_name,
            model_fingerprint=first.model_fingerprint,
            dimension=first.dimension,
            normalized=first.normalized,
            index_type=first.index_type,
            extra=dict(first.extra),
        )
        atomic_write_json(path / SHARDS_MANIFEST, asdict(manifest))
        return cls(path, manifest, created)

    @classmethod
    def open(cls, path: str | Path) -> ShardedCollection:
        """Open every shard (each recovers alone from a crash) and check they agree with the top manifest."""
        path = Path(path)
        manifest = ShardManifest.read(path / SHARDS_MANIFEST)
        shards: list[Collection] = []
        try:
            for i in range(manifest.shard_count):
                shard_path = path / shard_name(i)
                if not Collection.exists(shard_path):
                    raise CollectionError(
                        f"{path} is damaged: {shard_name(i)} is missing "
                        f"(the manifest names {manifest.shard_count} shards)"
                    )
                shard = Collection.open(shard_path)
                shards.append(shard)
                if shard.manifest.model_fingerprint != manifest.model_fingerprint:
                    raise CollectionError(
                        f"{shard_path} was built with another bi-encoder than {path}/{SHARDS_MANIFEST} "
                        f"names (fingerprint {shard.manifest.model_fingerprint[:12]}, "
                        f"not {manifest.model_fingerprint[:12]})"
                    )
        except BaseException:
            for shard in shards:
                shard.close()
            raise
        return cls(path, manifest, shards)

    # ------------------------------------------------------------------ routing
    def shard_of(self, doc_id: str) -> int:
        return shard_of(doc_id, len(self.shards))

    def _by_shard(self, doc_ids: Sequence[str]) -> dict[int, list[int]]:
        """Positions in ``doc_ids`` grouped by owning shard."""
        groups: dict[int, list[int]] = {}
        for pos, doc_id in enumerate(doc_ids):
            groups.setdefault(self.shard_of(doc_id), []).append(pos)
        return groups

    def _each(self, fn: Callable[[Collection], Any]) -> list[Any]:
        """``fn`` on every shard at once (FAISS and SQLite release the GIL), results in shard order."""
        return list(self._pool.map(fn, self.shards))

    # ------------------------------------------------------------------ writes
    def hold_writers(self) -> None:
        """Every shard's writer lock, taken before the first shard is written: a shard another process is changing
        (or a read-only one) stops the write before any shard changed. Each lock goes with that shard's commit.
        Under them, a write another process left half done (its intent record) is first finished."""
        taken: list[Collection] = []
        root_taken = not self._root_lock.held
        if root_taken:
            self._root_lock.acquire(Collection.lock_wait)
        try:
            for shard in self.shards:
                if shard.hold_writer():
                    taken.append(shard)
            self._finish_interrupted()
        except BaseException:
            for shard in taken:
                shard.release_writer()
            if root_taken:
                self._root_lock.release()
            raise

    def _finish_interrupted(self) -> None:
        """Roll forward the sharded write recorded in ``intent.json`` (an earlier writer was killed, or failed, between
        shards), under every shard's lock (held by the caller); it is kept in :attr:`finished`."""
        record = intent.read_intent(self.path)
        if record is None:
            (self.path / intent.SPOOL).unlink(missing_ok=True)  # litter of a write that had finished
            return
        if record.shard_count != len(self.shards):
            raise CollectionError(
                f"{self.path / intent.INTENT} names {record.shard_count} shards, the collection has "
                f"{len(self.shards)}: run 'twostage check {self.path}'"
            )
        log.warning("%s: finishing %s that was interrupted", self.path, record.describe())
        step = intent.shard_step(self.path, record)
        intent.carry_out(self.path, record, lambda i: self._step(i, step))
        self.finished = record

    def _step(self, index: int, step: Callable[[int, Any], None]) -> None:
        """One shard's part of a recorded write; its lock is held again after (a conversion lets it go)."""
        step(index, self.shards[index])
        self.shards[index].hold_writer()

    def _sharded_write(
        self, record: intent.Intent, step: Callable[[int, Collection], None], spool: dict[str, Any] | None = None
    ) -> None:
        """Apply ``step`` to each shard ``record`` names as pending, recorded first when more than one takes part (one
        shard's transaction is atomic by itself). The caller holds every writer lock (:meth:`hold_writers`)."""
        involved = record.pending()
        if len(involved) > 1:
            intent.begin(self.path, record, spool)
            intent.carry_out(self.path, record, lambda i: self._step(i, step))
        else:
            for i in involved:
                self._step(i, step)

    def _record(self, operation: str, arguments: dict[str, Any], shards: Iterable[int]) -> intent.Intent:
        """An intent record for a write to ``shards`` (the others are marked done from the start)."""
        involved = set(shards)
        done = [i for i in range(len(self.shards)) if i not in involved]
        return intent.Intent(operation, arguments, len(self.shards), done=done)

    def upsert(
        self,
        docs: Sequence[Document],
        embeddings: np.ndarray,
        tokens: Sequence[np.ndarray] | None = None,
        terms: Sequence[np.ndarray] | None = None,
        splits: Sequence[Sequence[Passage]] | None = None,
    ) -> list[UpsertResult]:
        """Store each document, with its passages' rows (``splits`` as in ``Collection.upsert``), in its owning shard,
        in all of the shards or none (``indexes.intent``: an add's chunk is spooled first); one result per shard."""
        docs = list(docs)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        rows_of = passage_rows(splits, len(docs))
        if len(embeddings) != sum(len(r) for r in rows_of):
            raise ValueError(f"{sum(len(r) for r in rows_of)} passages but {len(embeddings)} embeddings")
        self.hold_writers()
        groups = self._by_shard([d.id for d in docs])
        results: list[UpsertResult] = []

        def step(i: int, shard: Collection) -> None:
            part, vectors, rows = shard_upsert_arguments(groups[i], rows_of, docs, embeddings, tokens, terms, splits)
            results.append(shard.upsert(part, vectors, **rows))

        record = self._record("upsert", {"ids": [d.id for d in docs]}, groups)
        listed = (None if tokens is None else list(tokens), None if terms is None else list(terms))
        spool = intent.spool_upsert(docs, embeddings, *listed, splits) if len(groups) > 1 else None
        self._sharded_write(record, step, spool)
        return results

    def delete(self, doc_ids: Sequence[str]) -> DeleteResult:
        """Delete by id in the owning shards, in all of them or none; ``deleted`` and ``missing`` keep the order given."""
        ids = list(dict.fromkeys(str(d) for d in doc_ids))
        self.hold_writers()
        groups = self._by_shard(ids)
        missing: set[str] = set()

        def step(i: int, shard: Collection) -> None:
            missing.update(shard.delete([ids[p] for p in groups[i]]).missing)

        self._sharded_write(self._record("delete", {"ids": ids}, groups), step)
        return DeleteResult(deleted=[d for d in ids if d not in missing], missing=[d for d in ids if d in missing])

    def convert_tokens(self, encoding: str, pool: float | None = None) -> None:
        """Re-encode every shard's token vectors (``Collection.convert_tokens``), in all shards or none; re-running a
        conversion that was interrupted finishes it without converting the finished shards again."""
        if any(shard.token_store is None for shard in self.shards):
            raise CollectionError(f"collection {self.path} stores no token vectors (build it with --store-tokens)")
        self.hold_writers()
        arguments = {"encoding": encoding, "pool": pool}
        if self.finished is not None and (self.finished.operation, self.finished.arguments) == (
            "convert_tokens",
            arguments,
        ):
            return
        record = self._record("convert_tokens", arguments, range(len(self.shards)))
        self._sharded_write(record, lambda i, shard: shard.convert_tokens(encoding, pool=pool))

    def commit(self) -> None:
        try:
            self._each(lambda shard: shard.commit())
        finally:
            self._root_lock.release()

    # ------------------------------------------------------------------ reads
    def search(
        self,
        query_vectors: np.ndarray,
        k: int,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Every shard's top-``k`` per query, merged exactly (see :func:`merge_top_k`)."""
        per_shard = self._each(
            lambda shard: shard.search(
                query_vectors,
                min(k, max(shard.passage_count(), 1)),
                filter=filter,
                ef_search=ef_search,
                nprobe=nprobe,
            )
        )
        return [merge_top_k([hits[q] for hits in per_shard], k) for q in range(len(per_shard[0]))]

    def lexical_search(
        self, queries: Sequence[str], k: int, filter: Mapping[str, Any] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Every shard's BM25 top-``k``, merged by score. Each shard scores with its own statistics (document
        frequencies, mean length), so scores and the order near ties differ slightly from one collection's; the
        documents matching a query are the same."""
        per_shard = self._each(lambda shard: shard.lexical_search(queries, k, filter))
        return [merge_top_k([hits[q] for hits in per_shard], k) for q in range(len(queries))]

    def get(self, doc_ids: Sequence[str]) -> list[Document | None]:
        """Documents in the order asked; None for an id in no shard."""
        ids = [str(d) for d in doc_ids]
        out: list[Document | None] = [None] * len(ids)
        for index, positions in self._by_shard(ids).items():
            for pos, doc in zip(positions, self.shards[index].get([ids[p] for p in positions])):
                out[pos] = doc
        return out

    def embeddings_of(self, doc_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of these documents, in order (KeyError for an id in no shard)."""
        ids = [str(d) for d in doc_ids]
        out = np.empty((len(ids), self.manifest.dimension), dtype=np.float32)
        for index, positions in self._by_shard(ids).items():
            out[positions] = self.shards[index].embeddings_of([ids[p] for p in positions])
        return out

    def iter_documents(self) -> Iterator[Document]:
        """Every document, shard by shard."""
        for shard in self.shards:
            yield from shard.iter_documents()

    def hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """doc_id -> content hash for the ids stored (what a resumed run skips)."""
        found: dict[str, str] = {}
        ids = [str(d) for d in doc_ids]
        for index, positions in self._by_shard(ids).items():
            found.update(self.shards[index].hashes([ids[p] for p in positions]))
        return found

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def stats(self) -> dict[str, Any]:
        """Totals over the shards, then each shard's own counts, for ``twostage info``."""
        per_shard = self._each(lambda shard: shard.stats())
        m = self.manifest
        totals = {
            key: sum(s[key] for s in per_shard)
            for key in (
                "document_count",
                "passage_count",
                "vector_count",
                "tombstones",
                "vectors_bytes",
                "documents_bytes",
                "disk_bytes",
            )
        }
        return {
            "path": str(self.path),
            "shard_count": m.shard_count,
            "routing": m.routing,
            "model_name": m.model_name,
            "model_fingerprint": m.model_fingerprint,
            "dimension": m.dimension,
            "normalized": m.normalized,
            "index_type": m.index_type,
            **totals,
            "extra": dict(m.extra),
            **self._interrupted(),
            "shards": [
                {
                    "shard": shard_name(i),
                    "document_count": s["document_count"],
                    "passage_count": s["passage_count"],
                    "factory": s["factory"],
                    "generation": s["generation"],
                    "disk_bytes": s["disk_bytes"],
                }
                for i, s in enumerate(per_shard)
            ],
        }

    def _interrupted(self) -> dict[str, str]:
        """For ``info``: a sharded write left half done, which the next write or ``check --repair`` finishes."""
        try:
            record = intent.read_intent(self.path)
        except CollectionError as err:
            return {"interrupted_write": str(err)}
        if record is None:
            return {}
        return {"interrupted_write": f"{record.describe()} (the next write or 'twostage check --repair' finishes it)"}

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Commit and close every shard. Safe to call twice."""
        try:
            self._each(lambda shard: shard.close())
        finally:
            self._root_lock.release()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_collection(path: str | Path) -> Collection | ShardedCollection:
    """Open whichever a directory holds: a sharded collection (``shards.json``) or a single one (``manifest.json``)."""
    if ShardedCollection.exists(path):
        return ShardedCollection.open(path)
    return Collection.open(path)


def finish_interrupted(collection: Collection | ShardedCollection) -> intent.Intent | None:
    """For a writer about to change ``collection``: take its writer locks and finish the sharded write an earlier
    process left half done; returns that write (None for an unsharded collection, whose writes are each atomic)."""
    if not isinstance(collection, ShardedCollection):
        return None
    collection.hold_writers()
    return collection.finished


def check_writable(path: str | Path) -> None:
    """Refuse a collection (either kind) this process cannot write, before any slow work such as loading a model:
    a read-only mount or files without write permission raise ReadOnlyCollection naming the place."""
    path = Path(path)
    if ShardedCollection.exists(path):
        parts = [path, *(path / shard_name(i) for i in range(ShardManifest.read(path / SHARDS_MANIFEST).shard_count))]
    else:
        parts = [path]
    for part in parts:
        for target in (part, part / DOCUMENTS):
            if target.exists() and not os.access(target, os.W_OK):
                raise ReadOnlyCollection(f"{target} is read-only here: the collection can be searched but not changed")


def read_manifest(path: str | Path) -> Any:
    """The manifest of whichever collection ``path`` holds (``ShardManifest`` or ``Manifest``), read without opening
    its index or SQLite: what a caller needs to know before choosing how to open it."""
    path = Path(path)
    if ShardedCollection.exists(path):
        return ShardManifest.read(path / SHARDS_MANIFEST)
    return Collection._read_manifest(path / MANIFEST)


def collection_exists(path: str | Path) -> bool:
    """True when ``path`` holds a collection of either kind."""
    return ShardedCollection.exists(path) or Collection.exists(path)


def _existing_count(path: Path) -> int:
    """How many consecutive ``shard-NNN`` folders ``path`` holds (an old sharded collection being overwritten)."""
    count = 0
    while (path / shard_name(count)).is_dir():
        count += 1
    return count


def _remove_shard(shard: Path) -> None:
    """Delete a shard folder of an overwritten collection: a collection's own files only, then the folder."""
    from .collection import OWN_FILES

    for child in shard.iterdir():
        if child.name in OWN_FILES or child.name.startswith("."):
            child.unlink()
    shard.rmdir()
