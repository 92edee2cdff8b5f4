"""The collection eval searches: built once per dataset and bi-encoder in eval's cache (or ``--index``), resumed
when it holds exactly the dataset's corpus, never replaced without ``--overwrite`` unless it is eval's own."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twostage.errors import UsageError
from twostage.eval.datasets import Dataset
from twostage.eval.errors import EvalInputError

if TYPE_CHECKING:
    from twostage.engine import Engine
from twostage.runtime.backends import FLOAT_BACKENDS
from twostage.runtime.config import RuntimeConfig, cache_root, runtime_config

#: how collections that eval builds store MaxSim's token vectors (int8: nDCG@10 within 0.0003 of float16)
EVAL_TOKENS = "int8"


def default_index_dir(dataset: Dataset, encoder: Any) -> Path:
    """`$TWOSTAGE_CACHE_DIR` (else ~/.cache/twostage) `/collections/<dataset>-<hash of source and model>`."""
    vectors = "" if encoder.backend in FLOAT_BACKENDS else f"|{encoder.backend}"  # int8 vectors need their own
    key = hashlib.sha256(f"{dataset.source}|{encoder.fingerprint}{vectors}|tokens-{EVAL_TOKENS}".encode()).hexdigest()[
        :12
    ]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.name) or "dataset"
    return cache_root() / "collections" / f"{slug}-{key}"


@dataclass(frozen=True)
class Mismatch:
    """How a collection differs from the one eval builds for a corpus: `kind` is "tokens" (no token vectors),
    "extra" (documents the corpus lacks) or "changed" (texts that differ); `reason` says it in words."""

    kind: str
    reason: str


def collection_mismatch(collection: Any, docs: list) -> Mismatch | None:
    """Why `collection` is not one eval built (or began building) for exactly `docs`, or None when it is (some
    documents may still be missing: an interrupted build is resumed)."""
    from twostage.indexes.document_store import content_hash

    if collection.token_store is None:
        return Mismatch("tokens", "it stores no token vectors")
    stored = len(collection)
    if stored == 0:
        return None
    hashes = collection.hashes([doc.id for doc in docs])
    extra = stored - len(hashes)
    if extra > 0:
        return Mismatch("extra", f"it holds {stored} documents, {extra} of them not in the corpus of {len(docs)}")
    changed = sum(1 for doc in docs if doc.id in hashes and hashes[doc.id] != content_hash(doc))
    if changed:
        return Mismatch(
            "changed", f"{changed} of its {stored} documents differ from the corpus (text, title or metadata)"
        )
    return None


def _refusal(path: Path, problem: Mismatch) -> EvalInputError:
    return EvalInputError(
        f"{path} holds a collection that is not the one eval builds for this dataset "
        f"({problem.reason}); "
        "it is left as it is: pass --overwrite to replace it, or choose another --index"
    )


def check_index_dir(path: Path, docs: list) -> None:
    """Before any model loads: refuse a `--index` folder that is not a directory, or that holds a collection other
    than this dataset's (`collection_mismatch`); an empty or missing folder, or this dataset's collection, pass."""
    from twostage.indexes.sharded import collection_exists
    from twostage.indexes.sharded import open_collection as open_stored

    if path.exists() and not path.is_dir():
        raise EvalInputError("exists and is not a directory; --index names a collection folder", path=path)
    if not collection_exists(path):
        return
    collection = open_stored(path)
    try:
        problem = collection_mismatch(collection, docs)
    finally:
        collection.close()
    if problem is not None:
        raise _refusal(path, problem)


def open_collection(
    path: Path, docs: list, encoder: Any, config: Any, log: Callable[[str], None], *, owned: bool = False
) -> tuple[Engine, dict[str, Any]]:
    """An engine over exactly `docs` at `path`, storing MaxSim token vectors: resumed when eval built it for these
    documents (unchanged ones skipped). A collection that is not that (`collection_mismatch`) is replaced only with
    `config.overwrite`, or when `owned` (eval's own cache folder, `default_index_dir`; there changed texts are
    re-indexed in place); otherwise EvalInputError, the collection untouched. Returns (engine, indexing info)."""
    from twostage.engine import Engine
    from twostage.indexes.sharded import collection_exists

    def create(overwrite: bool) -> Any:
        return Engine.create(
            path,
            encoder=encoder,
            reranker=config.reranker,
            index_type=config.index_type,
            runtime=eval_runtime(config),
            store_tokens=EVAL_TOKENS,
            overwrite=overwrite,
        )

    if config.overwrite and collection_exists(path):
        log(f"{path}: replacing the collection it holds (--overwrite)")
        engine = create(True)
    else:
        try:
            engine = create(False)
        except UsageError as err:
            if "without token storage" not in str(err):
                raise
            engine = None
        problem = (
            collection_mismatch(engine.collection, docs)
            if engine is not None
            else Mismatch("tokens", "it stores no token vectors")
        )
        if problem is not None and not owned:
            if engine is not None:
                engine.close()
            raise _refusal(path, problem)
        if problem is not None and problem.kind != "changed":  # eval's own cache folder: rebuilt for this corpus
            log(f"{path}: {problem.reason}: rebuilding it")
            if engine is not None:
                engine.close()
            engine = create(True)
    from tqdm.auto import tqdm

    with tqdm(total=len(docs), desc="indexing", unit="doc", disable=not config.progress, leave=False) as bar:
        report = engine.add(docs, progress=bar.update)
    if len(engine.collection) != len(docs):
        engine.close()
        raise EvalInputError(
            f"{path}: the collection holds {len(engine.collection)} documents after indexing "
            f"{len(docs)}; delete it and run again"
        )
    info = {
        "path": str(path),
        "documents": len(docs),
        "added": report.added,
        "replaced": report.replaced,
        "unchanged": report.unchanged,
        "passages": engine.collection.passage_count(),  # a long document is split into several; ranked by its best
        "split": report.split,
        "truncated": report.truncated,
        "seconds": round(report.seconds, 3),
        "factory": engine.collection.index.factory,
    }
    return engine, info


def eval_runtime(config: Any) -> RuntimeConfig:
    """The one RuntimeConfig every model of an evaluation (an ``EvalConfig``) runs with, the shorthands applied."""
    return runtime_config(config.runtime, backend=config.backend, batch_size=config.batch_size)
