"""The intent record of a sharded write: ``intent.json`` in the sharded collection's root, written before any shard.

A write that changes several shards (an add's chunk, a delete, a token conversion) is one transaction per shard, so a
crash between two of them would leave some shards changed and others not. The writer therefore records first, and
durably (temp file, fsync, rename, fsync of the directory), what it is about to do: the operation, its arguments (a
spooled copy of an add's documents and vectors in ``intent.npz`` beside it) and which shards have finished it. Every
operation is idempotent per shard, so the next writer (or ``twostage check --repair``) rolls an interrupted one
forward: it applies the operation to each shard not marked done and then removes the record. Readers never touch it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json, atomic_write_with, fsync_dir, read_json
from .documents import Document
from .errors import CollectionError
from .passage_store import passage_rows, splits_from_json, splits_to_json
from .routing import shard_of

INTENT = "intent.json"
SPOOL = "intent.npz"
#: the operations an intent record may name, each idempotent per shard
OPERATIONS = ("upsert", "delete", "convert_tokens")


@dataclass
class Intent:
    """One sharded write in flight: ``operation`` with ``arguments``, and the shards (by index) that finished it."""

    operation: str
    arguments: dict[str, Any]
    shard_count: int
    done: list[int] = field(default_factory=list)

    def pending(self) -> list[int]:
        return [i for i in range(self.shard_count) if i not in self.done]

    def describe(self) -> str:
        """One line for messages: what was interrupted and how far it got."""
        what = {
            "upsert": f"an add of {len(self.arguments.get('ids', []))} document(s)",
            "delete": f"a delete of {len(self.arguments.get('ids', []))} document(s)",
            "convert_tokens": f"a token conversion to {self.arguments.get('encoding')}",
        }.get(self.operation, self.operation)
        return f"{what}, finished in {len(self.done)} of {self.shard_count} shards"


def read_intent(root: Path) -> Intent | None:
    """The interrupted write recorded in ``root``, or None; a damaged record is a CollectionError naming the file."""
    path = root / INTENT
    if not path.exists():
        return None
    data = read_json(path)
    if not (
        isinstance(data, dict)
        and data.get("operation") in OPERATIONS
        and isinstance(data.get("arguments"), dict)
        and isinstance(data.get("shard_count"), int)
        and isinstance(data.get("done"), list)
        and all(isinstance(i, int) for i in data["done"])
    ):
        raise CollectionError(f"{path}: not an intent record this version understands (damaged or edited)")
    if data["operation"] == "upsert" and not (root / SPOOL).is_file():
        raise CollectionError(f"{path}: the documents of the interrupted add ({SPOOL}) are missing")
    return Intent(data["operation"], data["arguments"], data["shard_count"], data["done"])


def begin(root: Path, intent: Intent, spool: dict[str, Any] | None = None) -> None:
    """Record ``intent`` durably before the first shard changes (the spool first: a record implies its spool)."""
    if spool is not None:
        atomic_write_with(root / SPOOL, lambda tmp: _write_spool(tmp, spool))
    atomic_write_json(root / INTENT, asdict(intent))


def mark_done(root: Path, intent: Intent, shard: int) -> None:
    """Record that ``shard`` has committed the operation (a roll-forward then skips it)."""
    intent.done.append(shard)
    atomic_write_json(root / INTENT, asdict(intent))


def finish(root: Path) -> None:
    """Remove the record (every shard committed), then its spool; a spool without a record is only litter."""
    (root / INTENT).unlink(missing_ok=True)
    (root / SPOOL).unlink(missing_ok=True)
    fsync_dir(root)


def carry_out(root: Path, intent: Intent, apply: Callable[[int], None]) -> None:
    """Apply the recorded operation to every shard not yet done, marking each as it commits, then drop the record."""
    for shard in intent.pending():
        apply(shard)
        mark_done(root, intent, shard)
    finish(root)


def shard_step(root: Path, intent: Intent) -> Callable[[int, Any], None]:
    """``step(i, shard)``: the recorded operation on shard ``i`` (a Collection, or anything with its write methods).
    Each is idempotent: deleting what is gone, storing what is stored and converting what is converted change
    nothing a reader can tell, so a shard that committed but was not yet marked done may safely be done again."""
    args, count = intent.arguments, intent.shard_count
    if intent.operation == "delete":
        ids = [str(d) for d in args["ids"]]

        def delete(i: int, shard: Any) -> None:
            mine = [d for d in ids if shard_of(d, count) == i]
            if mine:
                shard.delete(mine)

        return delete
    if intent.operation == "convert_tokens":
        return lambda i, shard: shard.convert_tokens(args["encoding"], pool=args.get("pool"))
    docs, embeddings, tokens, terms, splits = load_upsert(root)
    rows_of = passage_rows(splits, len(docs))

    def upsert(i: int, shard: Any) -> None:
        mine = [p for p, d in enumerate(docs) if shard_of(d.id, count) == i]
        rows = [r for p in mine for r in rows_of[p]]
        if mine:
            shard.upsert(
                [docs[p] for p in mine],
                embeddings[rows],
                tokens=None if tokens is None else [tokens[r] for r in rows],
                terms=None if terms is None else [terms[r] for r in rows],
                splits=None if splits is None else [splits[p] for p in mine],
            )

    return upsert


# ---------------------------------------------------------------------------- the spool of an add
def spool_upsert(
    docs: list[Document], embeddings: np.ndarray, tokens: list | None, terms: list | None, splits: Any = None
) -> dict:
    """An add's chunk as arrays and JSON (no pickle): documents, their passages, vectors, and ragged token / term
    arrays (one row per passage)."""
    spool: dict[str, Any] = {
        "documents": json.dumps([[d.id, d.text, d.title, d.metadata] for d in docs], ensure_ascii=False),
        "embeddings": np.asarray(embeddings, dtype=np.float32),
    }
    if splits is not None:
        spool["splits"] = splits_to_json(splits)
    for name, arrays in (("tokens", tokens), ("terms", terms)):
        if arrays is not None:
            spool[name] = np.concatenate([np.asarray(a) for a in arrays]) if len(arrays) else np.zeros(0)
            spool[f"{name}_lengths"] = np.asarray([len(a) for a in arrays], dtype=np.int64)
    return spool


def load_upsert(root: Path) -> tuple[list[Document], np.ndarray, list | None, list | None, list | None]:
    """The chunk :func:`spool_upsert` wrote: documents, embeddings, tokens, terms and splits (None where not given)."""
    try:
        with np.load(root / SPOOL, allow_pickle=False) as data:
            docs = [Document(id=i, text=t, title=ti, metadata=m) for i, t, ti, m in json.loads(str(data["documents"]))]
            ragged = {}
            for name in ("tokens", "terms"):
                if name in data:
                    flat, lengths = data[name], data[f"{name}_lengths"]
                    ragged[name] = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
            splits = splits_from_json(str(data["splits"]), docs) if "splits" in data else None
            return docs, data["embeddings"], ragged.get("tokens"), ragged.get("terms"), splits
    except (OSError, ValueError, KeyError) as err:
        raise CollectionError(
            f"{root / SPOOL}: cannot be read ({err}); the interrupted add cannot be finished"
        ) from None


def _write_spool(tmp: Path, spool: dict[str, Any]) -> None:
    with open(tmp, "wb") as fh:  # a file object: given a name, numpy would append ".npz" to it
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in spool.items()}
        np.savez(fh, **arrays)
