"""``shards.json``: what a sharded collection is (shard count, routing, bi-encoder, dimension, index type), validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import read_json
from .errors import CollectionError
from .routing import ROUTING

SHARDS_MANIFEST = "shards.json"
SHARD_FORMAT_VERSION = 1


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
