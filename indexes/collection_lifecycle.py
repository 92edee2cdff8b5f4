"""Creating and opening a collection directory: the refusals (a foreign or damaged directory, an unknown vector
index, a documents file behind its index) and the in-memory repair an open makes after a crash. ``cls`` is the
``Collection`` class, handed in so that this module does not import it."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from .atomic import is_temp_file
from .collection_manifest import (
    DOCUMENTS,
    FORMAT_VERSION,
    MANIFEST,
    OWN_FILES,
    VECTORS,
    Manifest,
    read_manifest,
    utc_now,
)
from .document_store import DocumentStore, open_store, storage_errors
from .errors import CollectionError, StorageError
from .lexical import LexicalIndex
from .lock import LOCK_FILE, WriterLock
from .protocols import VectorIndexLike
from .token_pooling import check_factor
from .token_store import DEFAULT_ENCODING as DEFAULT_TOKEN_ENCODING
from .token_store import ENCODINGS as TOKEN_ENCODINGS
from .token_store import default_pool
from .vector_index import vector_index_class

log = logging.getLogger("twostage.indexes.collection")


def create_collection(
    cls: Any,
    path: str | Path,
    *,
    model_name: str,
    model_fingerprint: str,
    dimension: int,
    normalized: bool = True,
    index_type: str = "auto",
    expected_size: int | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    store_tokens: bool | str = False,
    token_pool: float | None = None,
    vector_index: str = "faiss",
) -> Any:
    """A new, empty collection. Refuses a directory holding other files, and an existing collection unless overwrite.
    ``token_pool`` (with ``store_tokens``) merges each passage's stored tokens ``token_pool`` to one
    (``indexes.token_pooling``); None: the encoding's default (``token_store.DEFAULT_POOL``: 2.5 for 2bit)."""
    path = Path(path)
    token_encoding = DEFAULT_TOKEN_ENCODING if store_tokens is True else str(store_tokens)
    if store_tokens and token_encoding not in TOKEN_ENCODINGS:
        raise CollectionError(f"token encoding must be one of {', '.join(TOKEN_ENCODINGS)} (got {token_encoding!r})")
    if token_pool is not None and not store_tokens:
        raise CollectionError("a token pool factor needs stored tokens (store_tokens / --store-tokens)")
    try:
        token_pool = (
            check_factor(token_pool)
            if token_pool is not None
            else default_pool(token_encoding)
            if store_tokens
            else 1.0
        )
    except ValueError as err:
        raise CollectionError(str(err)) from None
    if path.exists() and not path.is_dir():
        raise CollectionError(f"{path} exists and is not a directory")
    if (path / MANIFEST).is_file() and not overwrite:
        raise CollectionError(f"{path} already holds a collection: open it, or pass overwrite=True to replace it")
    check_own_files(path)
    if not overwrite:
        check_no_orphan_documents(path)
    try:
        index = vector_index_class(vector_index).create(dimension, index_type, expected_size)
    except ValueError as err:
        raise CollectionError(str(err)) from None
    with storage_errors(path / DOCUMENTS):
        path.mkdir(parents=True, exist_ok=True)
        with WriterLock(path).holding(cls.lock_wait):
            return _create_locked(
                cls,
                path,
                index,
                model_name=model_name,
                model_fingerprint=model_fingerprint,
                dimension=dimension,
                normalized=normalized,
                index_type=index_type,
                vector_index=vector_index,
                extra=extra,
                overwrite=overwrite,
                store_tokens=store_tokens,
                token_encoding=token_encoding,
                token_pool=token_pool,
            )


def check_own_files(path: Path) -> None:
    """Refuse a directory holding anything but a collection's own files (or temp files of an interrupted write)."""
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if p.name not in OWN_FILES and not is_temp_file(p, OWN_FILES))
        if foreign:
            raise CollectionError(
                f"{path} is not empty and is not a collection (it holds {', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty directory"
            )


def check_no_orphan_documents(path: Path) -> None:
    """Refuse a directory whose documents.sqlite holds documents but whose manifest is gone: a damaged collection
    to check or restore, never one to create over (an interrupted create leaves no documents and passes)."""
    database = path / DOCUMENTS
    if not database.is_file() or (path / MANIFEST).is_file():
        return
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            count = con.execute("SELECT count(*) FROM docs").fetchone()[0] if "docs" in tables else 0
    except sqlite3.Error:
        count = None
    if count != 0:
        held = f"{count} documents" if count is not None else "an unreadable database"
        raise CollectionError(
            f"{path} has no {MANIFEST} but its {DOCUMENTS} holds {held}: run 'twostage check "
            f"{path}' (or restore the manifest), or replace it with --overwrite (overwrite=True)"
        )


def _create_locked(
    cls: Any,
    path: Path,
    index: VectorIndexLike,
    *,
    model_name: str,
    model_fingerprint: str,
    dimension: int,
    normalized: bool,
    index_type: str,
    vector_index: str,
    extra: dict[str, Any] | None,
    overwrite: bool,
    store_tokens: bool | str,
    token_encoding: str,
    token_pool: float = 1.0,
) -> Any:
    """The file-writing part of :meth:`create`, under the writer lock so two creators cannot interleave."""
    if (path / MANIFEST).is_file() and not overwrite:
        raise CollectionError(f"{path} already holds a collection: open it, or pass overwrite=True to replace it")
    check_own_files(path)
    # Our own files only: an old collection being overwritten, or one whose creation was interrupted.
    for child in path.iterdir():
        if child.name != LOCK_FILE:
            child.unlink()
    store = DocumentStore(path / DOCUMENTS)
    now = utc_now()
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        model_name=model_name,
        model_fingerprint=model_fingerprint,
        dimension=dimension,
        normalized=normalized,
        index_type=index_type,
        factory=index.factory,
        vector_index=vector_index,
        generation=store.generation,
        created_at=now,
        updated_at=now,
        extra=dict(extra or {}),
    )
    if store_tokens:  # True (= "2bit"), or the encoding: "2bit", "pq", "1bit", "int8" or "float16"
        manifest.extra["token_store"] = {"encoding": token_encoding}
        if token_pool != 1.0:
            manifest.extra["token_store"]["pool"] = token_pool
    store.set_meta("dimension", dimension)
    store.set_meta("model_fingerprint", model_fingerprint)  # a second record, for 'check' to compare the manifest with
    LexicalIndex(store).create()
    index.save(path / VECTORS, generation=store.generation)
    collection = cls(path, manifest, store, index)
    collection._write_manifest()  # last: a directory with a manifest is a complete collection
    return collection


def open_collection_dir(cls: Any, path: str | Path) -> Any:
    """Open an existing collection. A vector index behind SQLite (a crash) is brought up to date from the stored
    embeddings, compared by ids; documents behind the index, or a damaged SQLite file, are refused untouched."""
    path = Path(path)
    if not path.is_dir():
        raise CollectionError(
            f"collection directory {path} " + ("is a file, not a directory" if path.exists() else "does not exist")
        )
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CollectionError(f"{path} is not a collection: {MANIFEST} is missing")
    manifest = read_manifest(manifest_path)
    try:
        index_class = vector_index_class(manifest.vector_index)
    except CollectionError as err:
        raise CollectionError(f"{manifest_path}: field 'vector_index': {err}") from None
    if not (path / DOCUMENTS).is_file():
        raise CollectionError(f"{path} is damaged: {DOCUMENTS} is missing")
    with storage_errors(path / DOCUMENTS):
        store = open_store(path / DOCUMENTS)
        try:
            collection = _open_with(cls, path, manifest, store, index_class)
        except BaseException:
            store.close()
            raise
    return collection


def _open_with(cls: Any, path: Path, manifest: Manifest, store: DocumentStore, index_class: Any) -> Any:
    """The checks and the repair of :meth:`open` once the store is open."""
    generation = store.generation
    stored_dimension = store.get_meta("dimension")
    if stored_dimension is not None and int(stored_dimension) != manifest.dimension:
        raise StorageError(
            f"{path / MANIFEST} says dimension {manifest.dimension} but {DOCUMENTS} holds {stored_dimension}-"
            f"dimensional embeddings: the manifest was edited or comes from another collection; nothing was changed"
        )
    reason = None
    index: VectorIndexLike | None
    try:
        index = index_class.load(path / VECTORS)
        if index.dimension != manifest.dimension:
            reason = f"index dimension {index.dimension} differs from the manifest's {manifest.dimension}"
            index = None
    except CollectionError as err:
        index, reason = None, str(err)
    ahead = max(manifest.generation, getattr(index, "generation", None) or 0)
    if generation < ahead:
        raise StorageError(
            f"{path}: {DOCUMENTS} is at generation {generation} but the vector index was written at generation "
            f"{ahead}: the documents file was truncated, replaced or restored from an older copy. Nothing was "
            f"changed. Restore the newer {DOCUMENTS}, or run 'twostage check {path} --repair' to rebuild the index "
            f"from the {store.count()} documents it holds"
        )
    collection = cls(path, manifest, store, index)
    if index is None:
        collection._rebuild_index(manifest.factory)
    elif not collection._catch_up():
        # a crash between the index's save and the manifest's leaves only the manifest behind (its counts stale): the
        # next write's commit rewrites it, as after a repair in memory
        collection.recovered = manifest.generation < generation
        return collection
    log.warning(
        "%s: the vector index was behind the documents (%s); brought up to date from the stored embeddings",
        path,
        reason or "its ids differ from the stored documents'",
    )
    problems = store.check()
    if problems:
        raise StorageError(
            f"{path / DOCUMENTS} fails SQLite's quick_check ({problems[0]}); nothing was rewritten: "
            f"run 'twostage check {path}' to see what can be saved"
        )
    collection.recovered = True  # served from memory: an open never writes (a full disk, a reader's mount)
    return collection
