"""A sharded collection served from Ray: one actor per shard, each the shard's only reader and writer; a write
that spans shards is recorded first (``indexes.intent``) and rolled forward after a crash, as ``ShardedCollection``'s."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage.errors import UsageError
from twostage.indexes import intent
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.lock import WriterLock
from twostage.indexes.sharded import (
    SHARDS_MANIFEST,
    ShardedCollection,
    ShardManifest,
    merge_top_k,
    shard_name,
    shard_of,
)

from .cluster import connect


class ShardActor:
    """One shard, opened by one actor: it searches the shard and is its only writer while the cluster serves it."""

    def __init__(self, path: str):
        from twostage.indexes.collection import Collection

        self.collection = Collection.open(path)

    def search(
        self, vectors: np.ndarray, k: int, filter: Mapping[str, Any] | None, ef_search: int | None, nprobe: int | None
    ) -> list[list[tuple[str, float]]]:
        size = max(self.collection.passage_count(), 1)
        return self.collection.search(vectors, min(k, size), filter=filter, ef_search=ef_search, nprobe=nprobe)

    def passages(self, keys: list[str], tokens: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Stored passages by key, and with ``tokens`` their MaxSim token vectors, in one round trip."""
        store = self.collection.token_store
        found = {}
        if tokens and store is not None:
            found = {k: t for k, t in zip(keys, store.get_many(keys)) if t is not None}
        return self.collection.passages(keys), found

    def get(self, doc_ids: list[str], tokens: bool) -> tuple[list[Document | None], dict[str, np.ndarray]]:
        """Documents, and with ``tokens`` their stored MaxSim token vectors, in one round trip."""
        docs = self.collection.get(doc_ids)
        store = self.collection.token_store
        found = {}
        if tokens and store is not None:
            found = {d: t for d, t in zip(doc_ids, store.get_many(doc_ids)) if t is not None}
        return docs, found

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Any other collection method (upsert, delete, commit, hashes, embeddings_of, stats, close)."""
        return getattr(self.collection, method)(*args, **kwargs)

    def size(self) -> int:
        return len(self.collection)


class PrefetchedTokens:
    """MaxSim's token store for a Ray-served collection: the vectors fetched with the candidates' documents."""

    def __init__(self, collection: RayShardedCollection):
        self.collection = collection
        self.encoding = "float16"
        self.latest: dict[str, np.ndarray] = {}

    def get(self, doc_id: str) -> np.ndarray | None:
        if doc_id in self.latest:
            return self.latest[doc_id]
        return self.collection.tokens_of(doc_id)

    def get_many(self, doc_ids: Sequence[str]) -> list[np.ndarray | None]:
        return [self.get(doc_id) for doc_id in doc_ids]


class RayShardedCollection:
    """A sharded collection whose shards live in Ray actors; the same methods as :class:`ShardedCollection`."""

    def __init__(self, path: Path, manifest: ShardManifest, actors: list[Any], ray: Any, has_tokens: bool):
        self.path = path
        self.manifest = manifest
        self.actors = actors
        self.recovered = False
        self.token_df = None  # IDF weighting needs every shard's counts in one place: not served through Ray
        self._ray = ray
        self.token_store = PrefetchedTokens(self) if has_tokens else None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, *, address: str) -> RayShardedCollection:
        """Start one actor per shard of the sharded collection at ``path`` (every shard opened where its actor runs)."""
        path = Path(path).resolve()
        if not ShardedCollection.exists(path):
            raise UsageError(
                f"--ray serves a sharded collection, and {path} has no {SHARDS_MANIFEST}; "
                f"build one with 'twostage index CORPUS --index DIR --shards N'"
            )
        manifest = ShardManifest.read(path / SHARDS_MANIFEST)
        ray = connect(address)
        remote = ray.remote(num_cpus=0)(ShardActor)
        actors = [remote.remote(str(path / shard_name(i))) for i in range(manifest.shard_count)]
        ray.get([a.size.remote() for a in actors])  # opened (and recovered) before the first query
        has_tokens = bool(manifest.extra.get("token_store"))
        return cls(path, manifest, actors, ray, has_tokens)

    def _by_shard(self, doc_ids: Sequence[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for pos, doc_id in enumerate(doc_ids):
            groups.setdefault(shard_of(doc_id, len(self.actors)), []).append(pos)
        return groups

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self._ray.get([actor.call.remote(method, *args) for actor in self.actors])

    def search(
        self,
        query_vectors: np.ndarray,
        k: int,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        per_shard = self._ray.get([a.search.remote(vectors, k, filter, ef_search, nprobe) for a in self.actors])
        return [merge_top_k([hits[q] for hits in per_shard], k) for q in range(len(vectors))]

    def lexical_search(
        self, queries: Sequence[str], k: int, filter: Mapping[str, Any] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Every shard actor's BM25 top-``k``, merged (per-shard statistics: see ``ShardedCollection.lexical_search``)."""
        per_shard = self._all("lexical_search", list(queries), k, filter)
        return [merge_top_k([hits[q] for hits in per_shard], k) for q in range(len(queries))]

    def get(self, doc_ids: Sequence[str]) -> list[Document | None]:
        """Documents in the order asked; their token vectors are kept for the reranker that comes next."""
        ids = [str(d) for d in doc_ids]
        groups = self._by_shard(ids)
        want_tokens = self.token_store is not None
        replies = self._ray.get(
            [self.actors[i].get.remote([ids[p] for p in pos], want_tokens) for i, pos in groups.items()]
        )
        out: list[Document | None] = [None] * len(ids)
        tokens: dict[str, np.ndarray] = {}
        for (_, positions), (docs, found) in zip(groups.items(), replies):
            for pos, doc in zip(positions, docs):
                out[pos] = doc
            tokens.update(found)
        if self.token_store is not None:
            self.token_store.latest = tokens
        return out

    def passages(self, keys: Sequence[str]) -> dict[str, Any]:
        """Stored passages by key, from their documents' shards; their token vectors are kept for the reranker."""
        ids = [str(k) for k in keys]
        groups = self._by_shard(ids)
        want_tokens = self.token_store is not None
        replies = self._ray.get(
            [self.actors[i].passages.remote([ids[p] for p in pos], want_tokens) for i, pos in groups.items()]
        )
        out: dict[str, Any] = {}
        tokens: dict[str, np.ndarray] = {}
        for found, vectors in replies:
            out.update(found)
            tokens.update(vectors)
        if self.token_store is not None:
            self.token_store.latest = tokens
        return out

    def passage_count(self) -> int:
        return sum(self._all("passage_count"))

    def tokens_of(self, doc_id: str) -> np.ndarray | None:
        """One document's stored token vectors, from its shard's actor."""
        _, found = self._ray.get(self.actors[shard_of(doc_id, len(self.actors))].get.remote([doc_id], True))
        return found.get(doc_id)

    def upsert(
        self,
        docs: Sequence[Document],
        embeddings: np.ndarray,
        tokens: Sequence[np.ndarray] | None = None,
        terms: Sequence[np.ndarray] | None = None,
        splits: Sequence[Any] | None = None,
    ) -> list[Any]:
        """Each document, with its passages' rows (``Collection.upsert``'s ``splits``), to the actor that owns its
        shard, in all of the shards or none (``indexes.intent``)."""
        from twostage.indexes.passage_store import passage_rows, shard_upsert_arguments

        docs = list(docs)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        rows_of = passage_rows(splits, len(docs))
        groups = self._by_shard([d.id for d in docs])

        def call(index: int) -> Any:
            part, vectors, rows = shard_upsert_arguments(
                groups[index], rows_of, docs, embeddings, tokens, terms, splits
            )
            return self.actors[index].call.remote("upsert", part, vectors, **rows)

        record = self._record("upsert", {"ids": [d.id for d in docs]}, groups)
        spool = intent.spool_upsert(
            docs, embeddings, None if tokens is None else list(tokens), None if terms is None else list(terms), splits
        )
        return self._recorded(record, call, spool if len(groups) > 1 else None)

    def delete(self, doc_ids: Sequence[str]) -> Any:
        from twostage.indexes.collection import DeleteResult

        ids = list(dict.fromkeys(str(d) for d in doc_ids))
        groups = self._by_shard(ids)
        results = self._recorded(
            self._record("delete", {"ids": ids}, groups),
            lambda i: self.actors[i].call.remote("delete", [ids[p] for p in groups[i]]),
        )
        missing = {d for r in results for d in r.missing}
        return DeleteResult(deleted=[d for d in ids if d not in missing], missing=[d for d in ids if d in missing])

    def _record(self, operation: str, arguments: dict[str, Any], shards: Iterable[int]) -> intent.Intent:
        involved = set(shards)
        done = [i for i in range(len(self.actors)) if i not in involved]
        return intent.Intent(operation, arguments, len(self.actors), done=done)

    def _recorded(
        self, record: intent.Intent, call: Callable[[int], Any], spool: dict[str, Any] | None = None
    ) -> list[Any]:
        """Send a write to the actors of the shards ``record`` names as pending, recorded first in ``intent.json``
        when more than one takes part (as ``ShardedCollection`` does), marking each shard done as its actor answers.
        The root's writer lock keeps this driver and any other process's sharded writer from interleaving records."""
        with WriterLock(self.path).holding(Collection.lock_wait):
            self._finish_interrupted()
            pending = record.pending()
            if len(pending) <= 1:
                return self._ray.get([call(i) for i in pending])
            intent.begin(self.path, record, spool)
            shard_of_ref = {call(i): i for i in pending}
            waiting, results = list(shard_of_ref), []
            while waiting:
                ready, waiting = self._ray.wait(waiting, num_returns=1)
                results.append(self._ray.get(ready[0]))
                intent.mark_done(self.path, record, shard_of_ref[ready[0]])
            intent.finish(self.path)
            return results

    def _finish_interrupted(self) -> None:
        """Roll forward a sharded write another process (or a failed call) left half done, through the actors."""
        record = intent.read_intent(self.path)
        if record is None:
            return
        step = intent.shard_step(self.path, record)
        intent.carry_out(self.path, record, lambda i: step(i, _ActorShard(self._ray, self.actors[i])))

    def commit(self) -> None:
        self._all("commit")

    def embeddings_of(self, doc_ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of these documents, in order, each from its shard's actor."""
        ids = [str(d) for d in doc_ids]
        groups = self._by_shard(ids)
        out = np.empty((len(ids), self.manifest.dimension), dtype=np.float32)
        replies = self._ray.get(
            [self.actors[i].call.remote("embeddings_of", [ids[p] for p in pos]) for i, pos in groups.items()]
        )
        for positions, vectors in zip(groups.values(), replies):
            out[positions] = vectors
        return out

    def hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        ids = [str(d) for d in doc_ids]
        groups = self._by_shard(ids)
        found: dict[str, str] = {}
        for reply in self._ray.get(
            [self.actors[i].call.remote("hashes", [ids[p] for p in pos]) for i, pos in groups.items()]
        ):
            found.update(reply)
        return found

    def __len__(self) -> int:
        return sum(self._ray.get([a.size.remote() for a in self.actors]))

    def stats(self) -> dict[str, Any]:
        per_shard = self._all("stats")
        totals = {key: sum(s[key] for s in per_shard) for key in ("document_count", "vector_count", "disk_bytes")}
        return {
            "path": str(self.path),
            "shard_count": self.manifest.shard_count,
            "served_by": "ray actors",
            "model_name": self.manifest.model_name,
            "index_type": self.manifest.index_type,
            **totals,
            "shards": [
                {"shard": shard_name(i), "document_count": s["document_count"]} for i, s in enumerate(per_shard)
            ],
        }

    def close(self) -> None:
        """Commit and close every shard, then end the actors."""
        with self._lock:
            if not self.actors:
                return
            try:
                self._all("close")
            finally:
                for actor in self.actors:
                    self._ray.kill(actor)
                self.actors = []

    def __enter__(self) -> RayShardedCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ActorShard:
    """A shard actor seen as a collection: ``shard.delete(ids)`` is the actor's ``delete``, waited for."""

    def __init__(self, ray: Any, actor: Any):
        self._ray, self._actor = ray, actor

    def __getattr__(self, method: str) -> Callable[..., Any]:
        return lambda *args, **kwargs: self._ray.get(self._actor.call.remote(method, *args, **kwargs))
