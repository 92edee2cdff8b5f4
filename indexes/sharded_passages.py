"""A sharded collection's passages: each lives in its document's shard (``routing.shard_of`` reads the document id out
of a passage key), so reads go to that shard and counts are summed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .documents import Document
from .passage_store import StoredPassage


class ShardedPassages:
    """Passage reads of :class:`indexes.sharded.ShardedCollection` (its ``shards`` and ``_by_shard``)."""

    shards: list[Any]

    def _by_shard(self, doc_ids: Sequence[str]) -> dict[int, list[int]]:
        raise NotImplementedError

    def iter_passages(self) -> Iterator[Document]:
        """Every stored passage, shard by shard."""
        for shard in self.shards:
            yield from shard.iter_passages()

    def passages(self, keys: Sequence[str]) -> dict[str, StoredPassage]:
        """Stored passages by key, each read from its document's shard."""
        found: dict[str, StoredPassage] = {}
        ids = [str(k) for k in keys]
        for index, positions in self._by_shard(ids).items():
            found.update(self.shards[index].passages([ids[p] for p in positions]))
        return found

    def passage_count(self) -> int:
        """Passages in all shards: what the first stage searches."""
        return sum(shard.passage_count() for shard in self.shards)
