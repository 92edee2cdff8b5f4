"""What ``Engine.create`` checks when it resumes an existing collection: that what was asked for (shards, token
storage, index type, pooling) is what the collection already is; a one-line UsageError otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twostage.indexes.sharded import ShardedCollection

from .errors import UsageError


def check_resumed(
    collection: Any,
    path: Path,
    shards: int | None,
    store_tokens: bool | str,
    index_type: str,
    token_pool: float | None,
) -> None:
    """UsageError naming the first difference between the collection at ``path`` (a ``Collection`` or a
    ``ShardedCollection``) and ``Engine.create``'s options."""
    found = len(collection.shards) if isinstance(collection, ShardedCollection) else None
    if shards is not None and found != shards:
        raise UsageError(
            f"collection {path} {f'has {found} shards' if found else 'is not sharded'}, but "
            f"--shards {shards} was given; index into a new directory (or with --overwrite)"
        )
    if store_tokens and collection.token_store is None:
        raise UsageError(
            f"collection {path} was built without token storage; "
            "re-index with --overwrite to store tokens (or drop --store-tokens)"
        )
    stored = collection.token_store
    factory = _factory_of(collection)
    if not _same_index_type(index_type, collection.manifest.index_type, factory):
        raise UsageError(
            f"collection {path} has a {factory} index, not {index_type}; index into a new "
            "directory (or with --overwrite) to change it"
        )
    if isinstance(store_tokens, str) and stored is not None and stored.encoding != store_tokens:
        raise UsageError(
            f"collection {path} stores {stored.encoding} tokens, not {store_tokens}; convert them "
            f"with 'twostage tokens {path} --convert {store_tokens}' (or name no encoding)"
        )
    if token_pool is not None and stored is not None and stored.pool != token_pool:
        raise UsageError(
            f"collection {path} pools its tokens by {stored.pool:g}, not {token_pool:g}; index "
            "into a new directory (or with --overwrite) to change it"
        )


def _factory_of(collection: Any) -> str:
    """The FAISS factory string a collection's vectors are indexed with (a sharded one's first shard's: all alike)."""
    shards = getattr(collection, "shards", None)
    return (shards[0] if shards else collection).manifest.factory


def _same_index_type(given: str, recorded: str, factory: str) -> bool:
    """Whether ``index_type`` as given to a resumed ``create`` names the index the collection has: ``auto``, the name
    it was built with, the kind its factory string is (flat, hnsw, ivfpq) or the factory string itself."""
    wanted = given.strip().lower()
    kind = (
        "flat"
        if factory == "Flat"
        else "hnsw"
        if factory.startswith("HNSW")
        else "ivfpq"
        if factory.startswith("IVF") and ",PQ" in factory
        else factory.lower()
    )
    return wanted in ("auto", recorded.strip().lower(), kind, factory.lower())
