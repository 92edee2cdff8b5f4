"""Ray: distributed indexing (Ray Data over an encoder actor pool) and sharded search (one Ray actor per shard).

Imported only when ``--ray`` is given (importing ray takes seconds). The driver stays the one writer of every shard
during indexing: actors only encode, and each encoded batch is written through ``Collection.upsert`` (committed to
SQLite at once, FAISS written on commit), so a crash or a killed worker costs at most the batches in flight, and a
re-run skips every committed document. Serving, each shard is opened by one actor, which is then its only writer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage.indexes import intent
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.errors import CollectionError
from twostage.indexes.lock import WriterLock
from twostage.indexes.sharded import (
    SHARDS_MANIFEST,
    ShardedCollection,
    ShardManifest,
    merge_top_k,
    shard_name,
    shard_of,
)
from twostage.reranker.base import Candidate, Reranker
from twostage.runtime.config import RuntimeConfig

from .engine import AddReport, Engine, _chunks, _same, as_document
from .errors import UsageError

log = logging.getLogger(__name__)

#: documents read, checked against what is committed, and sent through one Ray Data pipeline at a time
WINDOW = 65536
#: a window whose pipeline fails (a node or actor lost for good) is retried from what was committed this often
WINDOW_ATTEMPTS = 3
#: environment the driver hands to every actor, so workers started elsewhere read the same caches and offline settings
FORWARDED_ENV = (
    "TWOSTAGE_CACHE_DIR",
    "TWOSTAGE_BACKEND",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "TOKENIZERS_PARALLELISM",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
)
LOOPBACK = ("127.0.0.1", "localhost")


# --------------------------------------------------------------------------- connecting
def connect(address: str) -> Any:
    """Join the Ray cluster at ``address`` (``host:port``), or with ``auto`` the one Ray finds on this machine, else a
    new single-node one. A loopback address, and a new local cluster, keep every Ray endpoint on 127.0.0.1."""
    from twostage.runtime.optional import require

    ray = require("ray", "ray", "--ray")

    if ray.is_initialized():
        return ray
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    options = dict(runtime_env={"env_vars": env}, log_to_driver=False, logging_level=logging.WARNING)
    if address.rsplit(":", 1)[0] in LOOPBACK:
        _stay_on_loopback(env)
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, **options)
    except ConnectionError as err:
        if address != "auto":
            raise UsageError(f"--ray {address}: cannot reach a Ray cluster there ({err})") from None
        _stay_on_loopback(env)
        ray.init(include_dashboard=False, **options)
    _quiet_ray_data(ray)
    return ray


def _stay_on_loopback(env: dict[str, str]) -> None:
    """Make Ray advertise 127.0.0.1 for this machine instead of its outward address (Ray's switch for single-machine
    clusters, read from the environment at import and set here too in case ray was imported already)."""
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """A ``HOST:PORT`` that answers, checked in seconds: Ray's own connect retries for minutes against an address where
    nothing listens."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray {address}: expected 'auto' or the head's HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise UsageError(f"--ray {address}: cannot reach a Ray cluster there ({err.strerror or err})") from None


def _quiet_ray_data(ray: Any) -> None:
    """Ray Data prints a progress report per operator; twostage shows its own progress instead."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- indexing
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
    progress: Callable[[int], None] | None = None,
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
        seen: set[str] = set()
        for window in _chunks((as_document(d) for d in documents), WINDOW):
            for doc in window:
                if doc.id in seen:
                    raise UsageError(f"document id {doc.id!r} appears twice in the input")
                seen.add(doc.id)
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
    progress: Callable[[int], None] | None,
) -> None:
    """Encode and write the window's new or changed documents; a failed pipeline is rerun on what is still missing."""
    collection = engine.collection
    existing = {doc.id: doc for doc in collection.get([d.id for d in window]) if doc is not None}
    replacing = {d.id for d in window if d.id in existing and not _same(existing[d.id], d)}
    todo = [d for d in window if not _same(existing.get(d.id), d)]
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
            written = {doc.id: doc for doc in collection.get([d.id for d in todo]) if doc is not None}
            todo = [d for d in todo if not (d.id in written and _same(written[d.id], d))]


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
    progress: Callable[[int], None] | None,
) -> None:
    from twostage.reranker.maxsim import content_token_ids

    if not todo:
        return
    collection = engine.collection
    # longest first, as the single-process path sorts: a batch of similar lengths pads little (in corpus order an
    # actor's batches padded to their longest passage and ran at 0.65x of one process on the same single thread)
    texts = [d.text_for_encoding() for d in todo]
    rows = [{"row": i, "text": texts[i]} for i in sorted(range(len(todo)), key=lambda i: -len(texts[i]))]
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
        docs = [todo[int(i)] for i in batch["row"]]
        tokens = None
        if "tokens" in batch:
            tokens = [
                np.frombuffer(b, dtype=np.float16).reshape(int(n), dim)
                for b, n in zip(batch["tokens"], batch["n_tokens"])
            ]
        # token ids for MaxSim's IDF weights: tokenising only, done here with the driver's own tokenizer
        terms = (
            content_token_ids(engine.encoder, [d.text_for_encoding() for d in docs])
            if getattr(collection, "token_df", None) is not None
            else None
        )
        collection.upsert(
            docs,
            np.asarray(batch["embedding"], dtype=np.float32),
            tokens=tokens,
            **({} if terms is None else {"terms": terms}),
        )
        replaced = sum(1 for d in docs if d.id in replacing)
        report.replaced += replaced
        report.added += len(docs) - replaced
        report.truncated += int(batch["truncated"].sum())
        report.cache_hits += int(batch["cache_hits"].sum())
        if progress:
            progress(len(docs))


# --------------------------------------------------------------------------- search
class ShardActor:
    """One shard, opened by one actor: it searches the shard and is its only writer while the cluster serves it."""

    def __init__(self, path: str):
        from twostage.indexes.collection import Collection

        self.collection = Collection.open(path)

    def search(
        self, vectors: np.ndarray, k: int, filter: Mapping[str, Any] | None, ef_search: int | None, nprobe: int | None
    ) -> list[list[tuple[str, float]]]:
        size = max(len(self.collection), 1)
        return self.collection.search(vectors, min(k, size), filter=filter, ef_search=ef_search, nprobe=nprobe)

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
    ) -> list[Any]:
        """Each document to the actor that owns its shard, in all of the shards or none (``indexes.intent``)."""
        docs = list(docs)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        groups = self._by_shard([d.id for d in docs])

        def call(index: int) -> Any:
            positions = groups[index]
            return self.actors[index].call.remote(
                "upsert",
                [docs[p] for p in positions],
                embeddings[positions],
                tokens=None if tokens is None else [tokens[p] for p in positions],
            )

        record = self._record("upsert", {"ids": [d.id for d in docs]}, groups)
        spool = intent.spool_upsert(docs, embeddings, None if tokens is None else list(tokens), None)
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


# --------------------------------------------------------------------------- reranking
class RerankerReplica:
    """One copy of a cross-encoder in a Ray actor."""

    def __init__(self, spec: str, model: str | None, runtime: RuntimeConfig, backend: str | None):
        from twostage.reranker.loading import load_reranker
        from twostage.retriever.biencoder import BiEncoder

        device, cross_backend = runtime.placement()
        encoder = (
            BiEncoder(model, device=device, batch_size=runtime.batch_size, backend=backend, threads=runtime.threads)
            if model
            else None
        )
        self.reranker, self.notice = load_reranker(
            spec,
            encoder=encoder,
            device=device,
            batch_size=runtime.batch_size,
            backend=cross_backend,
            threads=runtime.threads,
        )

    def describe(self) -> str:
        return self.reranker.name

    def score(self, queries: list[str], candidates: list[list[Candidate]]) -> list[np.ndarray]:
        return self.reranker.score_candidates(queries, candidates)


class RerankerPool(Reranker):
    """A :class:`Reranker` whose scoring runs on ``replicas`` Ray actors, one request each in turn."""

    def __init__(self, replicas: list[Any], name: str, ray: Any):
        self._ray = ray
        self._replicas = replicas
        self.name = name
        self._next = 0
        self._lock = threading.Lock()

    def _replica(self) -> Any:
        with self._lock:
            replica = self._replicas[self._next % len(self._replicas)]
            self._next += 1
        return replica

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        return self.score_candidates([query], [[Candidate(str(i), t) for i, t in enumerate(texts)]])[0]

    def score_candidates(
        self, queries: Sequence[str], candidates_per_query: Sequence[Sequence[Candidate]]
    ) -> list[np.ndarray]:
        return self._ray.get(self._replica().score.remote(list(queries), [list(c) for c in candidates_per_query]))


def open_ray_engine(
    directory: str | Path, *, address: str, reranker: str | None, replicas: int, runtime: RuntimeConfig | None
) -> Engine:
    """An engine over a Ray-served sharded collection. A cross-encoder reranks on ``replicas`` replica actors; MaxSim
    (named, or the offline fallback) runs in this process on the engine's own bi-encoder, since its only model work is
    the query and shipping 100 candidates' token vectors to a replica would cost more than scoring them here."""
    from twostage.reranker.loading import parse_spec

    engine = Engine.open(directory, reranker=reranker, runtime=runtime, ray=address)
    if reranker is None or parse_spec(reranker)[0] == "maxsim":
        return engine
    ray = connect(address)
    try:
        remote = ray.remote(num_cpus=0)(RerankerReplica)
        actors = [
            remote.remote(reranker, str(engine.encoder.source), runtime, engine.encoder.backend)
            for _ in range(max(1, replicas))
        ]
        name = ray.get(actors[0].describe.remote())
    except BaseException:
        engine.close()
        raise
    if name == "maxsim":  # the default cross-encoder fell back: score here, as for a named maxsim
        for actor in actors:
            ray.kill(actor)
        return engine
    engine._reranker = engine._reranker_spec = RerankerPool(actors, name, ray)
    return engine
