"""Where a document of a sharded collection lives: the shard routing, and the shards' folder names."""

from __future__ import annotations

import hashlib

from .documents import document_of

#: the only routing so far; recorded so that a future one cannot silently misroute an old collection
ROUTING = "blake2b-64-mod"


def shard_of(doc_id: str, shard_count: int) -> int:
    """The shard that owns ``doc_id``: BLAKE2b (8 bytes, big-endian) of its UTF-8 bytes mod ``shard_count``.

    Stable across processes, machines and Python versions (unlike ``hash()``), so any writer routes alike."""
    doc_id = document_of(str(doc_id))  # a passage (its stored key) lives in its document's shard
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


def shard_name(index: int) -> str:
    return f"shard-{index:03d}"
