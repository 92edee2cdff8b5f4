"""``twostage check`` of a sharded collection: ``shards.json``, the shards it names, what they must share, and an
interrupted sharded write (its intent record), then every shard as an ordinary collection (``indexes.check``).

Whatever ``ShardedCollection.open`` or a search refuses is a problem here: an unreadable or mistyped ``shards.json``,
a shard folder missing (counted from ``shards.json``, never from the folders present), a shard built with another
bi-encoder or dimension, shards storing tokens in different encodings (an interrupted conversion), an intent record
left by a killed writer. ``--repair`` rolls an interrupted write forward; what it cannot fix it says, exiting 2.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from . import intent
from .check import CheckReport, check_collection
from .collection import DOCUMENTS, MANIFEST, Collection
from .errors import CollectionError
from .routing import shard_name, shard_of
from .sharded import SHARDS_MANIFEST, ShardedCollection, ShardManifest


def check_sharded(path: str | Path, *, repair: bool = False, wait: float | None = None) -> list[CheckReport]:
    """One report for the sharded collection as a whole (first), then one per shard it names that exists."""
    path = Path(path)
    top = CheckReport(str(path))
    try:
        manifest: ShardManifest | None = ShardManifest.read(path / SHARDS_MANIFEST)
    except CollectionError as err:
        manifest = None
        top.problems.append(str(err))
        top.unrepairable.append(
            f"{SHARDS_MANIFEST} records the shard count, routing and bi-encoder and cannot be rebuilt: restore it "
            f"from a backup (each shard below is an ordinary collection)"
        )
    count = manifest.shard_count if manifest else 0
    present = _shard_folders(path)
    parts = [path / shard_name(i) for i in range(count)]
    for part in parts:
        if not Collection.exists(part):
            top.problems.append(f"{part.name} is missing or not a collection ({SHARDS_MANIFEST} names {count} shards)")
            top.unrepairable.append(f"{part.name} held the documents routed to it: restore it from a backup")
    for part in present:
        if manifest is not None and part not in parts:
            top.problems.append(
                f"{part.name} is not one of the {count} shards {SHARDS_MANIFEST} names: its documents are never searched"
            )
            top.unrepairable.append(f"move {part.name} away, or restore the {SHARDS_MANIFEST} that names it")
    checked = [p for p in (parts if manifest else present) if Collection.exists(p)]
    reports = []
    for part in checked:
        try:
            reports.append(check_collection(part, repair=repair, wait=wait))
        except CollectionError as err:  # not even a collection to check (its documents file is gone)
            top.problems.append(str(err))
            top.unrepairable.append(f"{part.name} cannot be checked: restore it from a backup")
    top.documents = sum(r.documents for r in reports)
    if manifest is not None:
        _same_model(manifest, checked, top)
        _routed(parts, checked, top)
        _roll_forward(path, checked, reports, top, repair)
    return [top, *reports]


def _routed(parts: list[Path], checked: list[Path], top: CheckReport) -> None:
    """Every document in the shard its id routes to: one elsewhere is found by search but not by get, replace or
    delete (a shard copied into the wrong folder, or ``shard_count`` edited)."""
    for part in checked:
        index = parts.index(part)
        try:
            con = sqlite3.connect(f"{(part / DOCUMENTS).resolve().as_uri()}?mode=ro", uri=True)
            try:
                stray = [r[0] for r in con.execute("SELECT doc_id FROM docs") if shard_of(r[0], len(parts)) != index]
            finally:
                con.close()
        except sqlite3.Error:
            continue  # that shard's own report says so
        if stray:
            shown = ", ".join(map(repr, stray[:3])) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
            top.problems.append(
                f"{part.name} holds {len(stray)} document(s) that route to another shard ({shown}): search finds "
                f"them, but get, replace and delete look for them elsewhere"
            )
            top.unrepairable.append(
                f"{part.name} is not the shard its folder name says (or {SHARDS_MANIFEST}'s shard_count was edited): "
                f"restore the shard or {SHARDS_MANIFEST} from a backup"
            )


def _shard_folders(path: Path) -> list[Path]:
    """The ``shard-NNN`` folders ``path`` holds, in order."""
    return sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("shard-") and p.name[6:].isdigit())


def _same_model(manifest: ShardManifest, parts: list[Path], top: CheckReport) -> None:
    """Every shard's bi-encoder fingerprint and dimension as ``shards.json`` names them (what open refuses)."""
    for part in parts:
        try:
            shard = Collection._read_manifest(part / MANIFEST)
        except CollectionError:
            continue  # that shard's own report says so
        if shard.model_fingerprint != manifest.model_fingerprint or shard.dimension != manifest.dimension:
            top.problems.append(
                f"{part.name} was built with another bi-encoder than {SHARDS_MANIFEST} names (fingerprint "
                f"{shard.model_fingerprint[:12]!r}, dimension {shard.dimension}; not "
                f"{manifest.model_fingerprint[:12]!r}, {manifest.dimension})"
            )
            top.unrepairable.append(
                f"{part.name}'s vectors are not comparable with the other shards': restore its {MANIFEST} (or the "
                f"shard) from a backup"
            )


def _token_encodings(parts: list[Path]) -> dict[str, str | None]:
    """Each shard's token encoding as its SQLite file records it (None: no token store, or unreadable)."""
    found: dict[str, str | None] = {}
    for part in parts:
        try:
            con = sqlite3.connect(f"{(part / DOCUMENTS).resolve().as_uri()}?mode=ro", uri=True)
            try:
                row = con.execute("SELECT value FROM meta WHERE key = 'token_encoding'").fetchone()
            finally:
                con.close()
            found[part.name] = json.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError):
            found[part.name] = None  # that shard's own report says what is wrong
    return found


def _roll_forward(path: Path, parts: list[Path], reports: list[CheckReport], top: CheckReport, repair: bool) -> None:
    """An interrupted sharded write (and the half-converted shards it may leave): found, and finished with --repair."""
    try:
        record = intent.read_intent(path)
    except CollectionError as err:
        top.problems.append(str(err))
        top.unrepairable.append(
            f"the interrupted write cannot be read back: restore {intent.INTENT} or remove it, then check again"
        )
        return
    encodings = {name: e for name, e in _token_encodings(parts).items() if e is not None}
    if record is not None:
        top.problems.append(f"an interrupted write: {record.describe()}")
    if len(set(encodings.values())) > 1 and not (record and record.operation == "convert_tokens"):
        shown = ", ".join(f"{name} {e}" for name, e in encodings.items())
        top.problems.append(f"the shards store tokens in different encodings ({shown})")
        top.unrepairable.append(
            f"no record says which encoding was meant: convert them all with 'twostage tokens {path} --convert ENCODING'"
        )
    if not (repair and record) or top.unrepairable or any(r.unrepairable for r in reports):
        return
    with ShardedCollection.open(path) as collection:
        collection.hold_writers()  # finishes the recorded write under every shard's lock
    top.repaired.append(f"finished {record.describe().rsplit(', finished', 1)[0]} in every shard")
