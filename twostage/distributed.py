"""Deprecated: the Ray code lives in ``twostage.shards`` (``cluster``, ``collection``, ``indexing``, ``replicas``).
These names still import from here, with a DeprecationWarning."""

from __future__ import annotations

import warnings
from importlib import import_module
from typing import Any

_MOVED = {
    "connect": "cluster",
    "_stay_on_loopback": "cluster",
    "FORWARDED_ENV": "cluster",
    "LOOPBACK": "cluster",
    "EncoderActor": "indexing",
    "index_distributed": "indexing",
    "WINDOW": "indexing",
    "WINDOW_ATTEMPTS": "indexing",
    "ShardActor": "collection",
    "PrefetchedTokens": "collection",
    "RayShardedCollection": "collection",
    "RerankerReplica": "replicas",
    "RerankerPool": "replicas",
    "open_ray_engine": "replicas",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module = f"twostage.shards.{_MOVED[name]}"
        warnings.warn(f"twostage.distributed.{name} is deprecated; import it from {module}", DeprecationWarning, 2)
        return getattr(import_module(module), name)
    raise AttributeError(f"module 'twostage.distributed' has no attribute {name!r}")
