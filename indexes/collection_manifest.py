"""A collection's manifest (``manifest.json``: the model that made its vectors and how they are indexed) and the
names of the files a collection directory holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json, read_json
from .errors import CollectionError
from .lock import LOCK_FILE

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VECTORS = "vectors.faiss"
DOCUMENTS = "documents.sqlite"
#: every file a collection directory may hold; ``create`` only ever deletes these
OWN_FILES = {
    MANIFEST,
    VECTORS,
    VECTORS + ".json",
    DOCUMENTS,
    DOCUMENTS + "-wal",
    DOCUMENTS + "-shm",
    DOCUMENTS + "-journal",
    LOCK_FILE,
}


@dataclass
class Manifest:
    """What the collection is: the model that made its vectors and how they are indexed."""

    format_version: int
    model_name: str
    model_fingerprint: str
    dimension: int
    metric: str = "inner_product"
    normalized: bool = True
    index_type: str = "auto"
    factory: str = "Flat"
    vector_index: str = "faiss"  # the implementation (indexes.vector_index.VECTOR_INDEXES); absent in old manifests
    document_count: int = 0
    passage_count: int = 0  # absent in manifests written before passages (then one per document)
    vector_count: int = 0
    generation: int = 0
    created_at: str = ""
    updated_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, source: Path) -> Manifest:
        """Validate a parsed ``manifest.json``; anything missing or mistyped is a CollectionError naming the field."""
        if not isinstance(data, dict):
            raise CollectionError(f"{source}: expected a JSON object")
        kinds = {"format_version": int, "model_name": str, "model_fingerprint": str, "dimension": int}
        for name, kind in kinds.items():
            if name not in data:
                raise CollectionError(f"{source}: field {name!r} is missing")
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise CollectionError(f"{source}: field {name!r} should be {kind.__name__}, got {data[name]!r}")
        optional = {
            "normalized": bool,
            "index_type": str,
            "factory": str,
            "document_count": int,
            "passage_count": int,
            "vector_count": int,
            "generation": int,
            "extra": dict,
        }
        for name, kind in optional.items():
            if name in data and not isinstance(data[name], kind):
                raise CollectionError(f"{source}: field {name!r} should be {kind.__name__}, got {data[name]!r}")
        token_record = data.get("extra", {}).get("token_store")
        if token_record is not None and not isinstance(token_record, dict):
            raise CollectionError(f"{source}: field 'extra.token_store' should be an object, got {token_record!r}")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise CollectionError(f"{source}: {err}") from None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(manifest_path: Path) -> Manifest:
    """The manifest at ``manifest_path``, checked field by field; a newer format than this version reads is refused."""
    manifest = Manifest.from_dict(read_json(manifest_path), manifest_path)
    if manifest.format_version > FORMAT_VERSION:
        raise CollectionError(
            f"{manifest_path}: collection format {manifest.format_version} is newer than this version supports "
            f"({FORMAT_VERSION}); upgrade twostage"
        )
    return manifest


def write_manifest(path: Path, manifest: Manifest) -> None:
    """``manifest`` into ``path``'s ``manifest.json``, atomically."""
    atomic_write_json(path / MANIFEST, asdict(manifest))
