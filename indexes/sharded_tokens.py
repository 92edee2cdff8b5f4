"""Token vectors and token document frequencies of a sharded collection, read from (or summed over) its shards."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .routing import shard_of
from .token_df import TokenDF


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
