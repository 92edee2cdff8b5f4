"""A sharded collection: a directory of N ordinary collections (``shard-000`` ...) and a top manifest ``shards.json``.

Each document lives in exactly one shard, chosen by a stable hash of its id (BLAKE2b of the UTF-8 id, mod N), so
``add``/``delete``/replace reach the owning shard from any process. Every shard is a complete collection that opens
and searches alone, with its own crash safety; a search asks every shard for its top-k (in threads) and merges them
exactly: the best k of the union, by score, ties broken by doc id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json, read_json
from .collection import MANIFEST, Collection, DeleteResult, by_score
from .document_store import UpsertResult
from .documents import Document
from .errors import CollectionError
from .token_df import TokenDF

SHARDS_MANIFEST = "shards.json"
SHARD_FORMAT_VERSION = 1
#: the only routing so far; recorded so that a future one cannot silently misroute an old collection
ROUTING = "blake2b-64-mod"


def shard_of(doc_id: str, shard_count: int) -> int:
    """The shard that owns ``doc_id``: BLAKE2b (8 bytes, big-endian) of its UTF-8 bytes mod ``shard_count``.

    Stable across processes, machines and Python versions (unlike ``hash()``), so any writer routes alike."""
    digest = hashlib.blake2b(str(doc_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


def shard_name(index: int) -> str:
    return f"shard-{index:03d}"


def merge_top_k(lists: Sequence[Sequence[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """The best ``k`` of several shards' ``(doc_id, score)`` lists: score descending, ties by doc id ascending.

    Exact: each shard returned its own top k, so the union holds the global top k."""
    return by_score([hit for hits in lists for hit in hits])[:k]


@dataclass
class ShardManifest:
    """What a sharded collection is: its shard count and routing, and the model and index type of every shard."""

    format_version: int
    shard_count: int
    routing: str
    model_name: str
    model_fingerprint: str
    dimension: int
    normalized: bool = True
    index_type: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> ShardManifest:
        """Parse and validate ``shards.json``; anything wrong is a CollectionError naming the file and field."""
        data = read_json(path)
        if not isinstance(data, dict):
            raise CollectionError(f"{path}: expected a JSON object")
        kinds = {
            "format_version": int,
            "shard_count": int,
            "routing": str,
            "model_name": str,
            "model_fingerprint": str,
            "dimension": int,
        }
        for name, kind in kinds.items():
            if name not in data:
                raise CollectionError(f"{path}: field {name!r} is missing")
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise CollectionError(f"{path}: field {name!r} should be {kind.__name__}, got {data[name]!r}")
        if data["format_version"] > SHARD_FORMAT_VERSION:
            raise CollectionError(
                f"{path}: sharded format {data['format_version']} is newer than this version "
                f"supports ({SHARD_FORMAT_VERSION}); upgrade twostage"
            )
        if data["shard_count"] < 1:
            raise CollectionError(f"{path}: field 'shard_count' must be at least 1, got {data['shard_count']}")
        if data["routing"] != ROUTING:
            raise CollectionError(f"{path}: field 'routing' is {data['routing']!r}; this version knows {ROUTING!r}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class ShardedTokenStore:
    """Token vectors read from the owning shard's store (what MaxSim asks for by doc id)."""

    def __init__(self, stores: Sequence[Any]):
        self.stores = list(stores)
        self.encoding = self.stores[0].encoding
        self.pool = self.stores[0].pool  # every shard is created with the same token pool factor

    def get(self, doc_id: str) -> np.ndarray | None:
        return self.stores[shard_of(doc_id, len(self.stores))].get(doc_id)

    def get_many(self, doc_ids: Sequence[str]) -> list[np.ndarray | None]:
        """Each doc's vectors in the order asked: one batched read per shard."""
        ids = [str(d) for d in doc_ids]
        out: list[np.ndarray | None] = [None] * len(ids)
        by_shard: dict[int, list[int]] = {}
        for i, doc_id in enumerate(ids):
            by_shard.setdefault(shard_of(doc_id, len(self.stores)), []).append(i)
        for shard, positions in by_shard.items():
            for i, array in zip(positions, self.stores[shard].get_many([ids[i] for i in positions])):
                out[i] = array
        return out


class ShardedTokenDF:
    """Token document frequencies summed over the shards, so IDF weights equal an unsharded collection's."""

    def __init__(self, tables: Sequence[TokenDF]):
        self.tables = list(tables)

    def __len__(self) -> int:
        return sum(len(table) for table in self.tables)

    def df(self, token_ids: Sequence[int]) -> np.ndarray:
        return np.sum([table.df(token_ids) for table in self.tables], axis=0)

    idf = TokenDF.idf  # the same formula, over the summed counts

    def rebuild(self, texts: Iterable[tuple[str, str]], term_ids: Callable[[list[str]], list[np.ndarray]]) -> None:
        """Recount every shard from its own ``(doc_id, text)`` pairs."""
        groups: list[list[tuple[str, str]]] = [[] for _ in self.tables]
        for doc_id, text in texts:
            groups[shard_of(doc_id, len(self.tables))].append((doc_id, text))
        for table, pairs in zip(self.tables, groups):
            table.rebuild(pairs, term_ids)


class ShardedCollection:
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
            ShardedTokenDF([s.token_df for s in shards])
            if all(getattr(s, "token_df", None) is not None for s in shards)
            else None
        )
        #: True when any shard found its vector index behind SQLite (an interrupted run) and rebuilt it
        self.recovered = any(s.recovered for s in shards)
        self._pool = ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="shard")

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
            names = {SHARDS_MANIFEST, *(shard_name(i) for i in range(max(shards, _existing_count(path))))}
            foreign = sorted(
                p.name for p in path.iterdir() if p.name not in names and not p.name.startswith(f".{SHARDS_MANIFEST}.")
            )
            if foreign:
                raise CollectionError(
                    f"{path} is not empty and is not a sharded collection (it holds "
                    f"{', '.join(foreign[:3])}); choose a new or empty directory"
                )
            (path / SHARDS_MANIFEST).unlink(missing_ok=True)  # first: a half-replaced directory is not a collection
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
        (or a read-only one) stops the write before any shard changed. Each lock goes with that shard's commit."""
        taken: list[Collection] = []
        try:
            for shard in self.shards:
                if shard.hold_writer():
                    taken.append(shard)
        except BaseException:
            for shard in taken:
                shard.release_writer()
            raise

    def upsert(
        self,
        docs: Sequence[Document],
        embeddings: np.ndarray,
        tokens: Sequence[np.ndarray] | None = None,
        terms: Sequence[np.ndarray] | None = None,
    ) -> list[UpsertResult]:
        """Store each document (with its vector, tokens and token ids) in its owning shard; one result per shard."""
        docs = list(docs)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if len(embeddings) != len(docs):
            raise ValueError(f"{len(docs)} documents but {len(embeddings)} embeddings")
        self.hold_writers()
        results = []
        for index, positions in sorted(self._by_shard([d.id for d in docs]).items()):
            results.append(
                self.shards[index].upsert(
                    [docs[p] for p in positions],
                    embeddings[positions],
                    tokens=None if tokens is None else [tokens[p] for p in positions],
                    **({} if terms is None else {"terms": [terms[p] for p in positions]}),
                )
            )
        return results

    def delete(self, doc_ids: Sequence[str]) -> DeleteResult:
        """Delete by id in the owning shards; ``deleted`` and ``missing`` keep the order given."""
        ids = list(dict.fromkeys(str(d) for d in doc_ids))
        self.hold_writers()
        missing: set[str] = set()
        for index, positions in self._by_shard(ids).items():
            missing.update(self.shards[index].delete([ids[p] for p in positions]).missing)
        return DeleteResult(deleted=[d for d in ids if d not in missing], missing=[d for d in ids if d in missing])

    def commit(self) -> None:
        self._each(lambda shard: shard.commit())

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
                query_vectors, min(k, max(len(shard), 1)), filter=filter, ef_search=ef_search, nprobe=nprobe
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
            "shards": [
                {
                    "shard": shard_name(i),
                    "document_count": s["document_count"],
                    "factory": s["factory"],
                    "generation": s["generation"],
                    "disk_bytes": s["disk_bytes"],
                }
                for i, s in enumerate(per_shard)
            ],
        }

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Commit and close every shard. Safe to call twice."""
        try:
            self._each(lambda shard: shard.close())
        finally:
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
