"""The engine: a collection, the bi-encoder that built it and a reranker, composed into index-and-search."""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, overload

import numpy as np

from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document, id_problem, unicode_problem
from twostage.indexes.protocols import CollectionLike, ManifestLike
from twostage.indexes.sharded import ShardedCollection, collection_exists, open_collection
from twostage.reranker.base import Reranker
from twostage.reranker.loading import RerankerFallbackWarning, load_reranker
from twostage.reranker.maxsim import MaxSimReranker, QueryTokens, content_token_ids, encode_for_store
from twostage.reranker.resolve import DEFAULT_RERANKER
from twostage.reranker.score_fusion import FusedReranker, Fusion
from twostage.retriever.biencoder import BiEncoder, EncodeResult
from twostage.retriever.fusion import FirstStage
from twostage.retriever.prf import PRF, rocchio
from twostage.runtime.autotune import measured, stage_backend
from twostage.runtime.backends import FLOAT_BACKENDS, compatible_query_backend
from twostage.runtime.config import RuntimeConfig, runtime_config
from twostage.runtime.models import DEFAULT_BI_ENCODER

from .errors import UsageError
from .memory import TemporaryHome, save_collection
from .results import Hit, SearchResult, Timings
from .search_request import SearchRequest
from .writer import OrderedWriter

#: documents encoded and committed to SQLite per step; a crash loses at most one step's work
ADD_CHUNK = 256
#: the second-stage levers a MaxSim search uses unless it names others: Rocchio feedback from the top 10, [CLS]/[SEP]
#: among the query tokens, and 0.8 x min-max(MaxSim) + 0.2 x min-max(first stage). Chosen on half of cacm and
#: confirmed on msmarco-dl20 by benchmarks/bench_levers.py (README, "Second-stage levers").
MAXSIM_DEFAULTS = {"prf": "10:0.5", "query_tokens": "special", "fusion": "minmax:0.8"}
#: the same on the device encode path (a GPU), where a step must hold many large batches
DEVICE_ADD_CHUNK = 32768


@dataclass
class AddReport:
    """What an ``add``/``index`` run did, for the CLI to print and tests to check."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    truncated: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    #: every document's id, in input order (generated ones for documents given as plain strings)
    ids: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        """Documents read from the input: added, replaced or unchanged."""
        return self.added + self.replaced + self.unchanged


@dataclass
class DeleteReport:
    """What a ``delete`` did: the ids removed, and those the collection did not hold."""

    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def as_document(doc: Document | Mapping[str, Any] | str) -> Document:
    """Accept ``Document`` objects, plain dicts with id/text (title and metadata optional) or a bare text (given a new
    random id); an id a TREC run cannot hold, or a string UTF-8 cannot store, is refused before anything is written."""
    if isinstance(doc, str):
        doc = Document(id=uuid.uuid4().hex, text=doc)
    elif not isinstance(doc, (Document, Mapping)):
        raise UsageError(
            f"document {doc!r:.60}: expected a text, a dict with 'id' and 'text', or a Document, not {type(doc).__name__}"
        )
    document = doc if isinstance(doc, Document) else _from_mapping(doc)
    if not isinstance(document.id, str):
        raise UsageError(f"document id {document.id!r}: must be a string, got {type(document.id).__name__}")
    if (problem := id_problem(document.id)) is not None:
        raise UsageError(f"document id {document.id!r}: {problem}")
    if not isinstance(document.text, str) or not document.text.strip():
        raise UsageError(f"document {document.id!r}: field 'text' must be a non-empty string")
    if document.title is not None and not isinstance(document.title, str):
        raise UsageError(f"document {document.id!r}: field 'title' must be a string or None")
    if not isinstance(document.metadata, dict):
        raise UsageError(f"document {document.id!r}: metadata must be a dict")
    try:  # as the document store will write it: JSON, no NaN or infinity
        json.dumps(document.metadata, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise UsageError(f"document {document.id!r}: metadata is not JSON (no NaN or infinity): {err}") from None
    for field_name, value in (("text", document.text), ("title", document.title), ("metadata", document.metadata)):
        if (problem := unicode_problem(value)) is not None:
            raise UsageError(f"document {document.id!r}, field {field_name!r}: {problem}")
    return document


def _from_mapping(doc: Mapping[str, Any]) -> Document:
    """A dict's fields as a Document (every field but id, text, title and metadata is metadata); ``as_document``
    checks the values."""
    missing = [key for key in ("id", "text") if key not in doc]
    if missing:
        raise UsageError(f"document {dict(doc)!r:.80} has no {missing[0]!r} field")
    metadata = dict(doc.get("metadata") or {})
    metadata.update({k: v for k, v in doc.items() if k not in ("id", "text", "title", "metadata")})
    doc_id = doc["id"]
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):  # as the corpus readers take ids
        raise UsageError(f"document id {doc_id!r}: must be a string or an integer, got {type(doc_id).__name__}")
    return Document(id=str(doc_id), text=doc["text"], title=doc.get("title"), metadata=metadata)


class Engine:
    """Index documents and search them in two stages. Build with :meth:`create` or :meth:`open`."""

    def __init__(
        self,
        collection: CollectionLike,
        encoder: BiEncoder,
        reranker: Reranker | str | None = DEFAULT_RERANKER,
        *,
        reranker_explicit: bool | None = None,
        backend: str | None = None,
        runtime: RuntimeConfig | None = None,
    ):
        self.collection = collection
        self.encoder = encoder
        #: device, backend, batch size and threads, as given (``backend=`` is a shorthand for ``runtime.backend``)
        self.runtime = runtime_config(runtime, backend=backend)
        #: where and how the cross-encoder runs (the bi-encoder's backend is ``encoder.backend``, fixed by the
        #: collection's vectors; MaxSim runs on the bi-encoder)
        self.device, self.backend = self.runtime.placement()
        self._reranker_spec = reranker
        self._reranker_explicit = reranker_explicit  # None: reranker.loading.is_implicit_default decides
        self._reranker: Reranker | None = reranker if isinstance(reranker, Reranker) else None
        #: one-line messages about the engine itself (a reranker fallback), in words of no interface: the CLI prints
        #: them once with its flag advice, the server in its banner and /stats, the Python API warns once per process
        self.notices: list[str] = []
        #: the private directory of an in-memory collection (``create(None)``), deleted on close
        self._home: TemporaryHome | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def in_memory(cls, **options: Any) -> Engine:
        """A new collection that lives as long as this engine (``create(None, **options)``): for tests and
        notebooks; :meth:`save` writes it to a directory."""
        return cls.create(None, **options)

    @classmethod
    def create(
        cls,
        path: str | Path | None,
        *,
        model: str = DEFAULT_BI_ENCODER,
        reranker: Reranker | str | None = DEFAULT_RERANKER,
        index_type: str = "auto",
        overwrite: bool = False,
        batch_size: int | None = None,
        encoder: BiEncoder | None = None,
        store_tokens: bool | str = False,
        token_pool: float | None = None,
        backend: str | None = None,
        runtime: RuntimeConfig | None = None,
        shards: int | None = None,
        request: SearchRequest | None = None,
    ) -> Engine:
        """A new, empty collection at ``path`` (or the existing one there, resumed, when built by the same model);
        ``path`` None: in memory (a private temporary directory, deleted on :meth:`close`; see :meth:`save`).

        ``shards=N`` builds a sharded collection (``indexes.sharded``): N collections, documents routed by id hash.

        ``store_tokens`` (True = "2bit", or "pq", "1bit", "int8", "float16") also stores each passage's token vectors at
        index time, so the MaxSim reranker encodes no passage at query time (``indexes.token_store``); ``token_pool``
        above 1 merges each passage's tokens that many to one first (``indexes.token_pooling``; None: 2.5 for 2bit, else
        none). ``runtime`` says where and how both stages run (device,
        backend, batch size, threads); ``backend=`` and ``batch_size=`` are shorthands that override its fields. The
        backend (torch, onnx, onnx-int8, openvino, openvino-int8; auto = measured here, ``runtime.autotune``) is
        recorded in the manifest. ``request`` (a :class:`SearchRequest`) gives the reranker and runtime instead."""
        if path is None:
            if shards is not None:
                raise UsageError("an in-memory collection is not sharded; give a directory to create shards in")
            home = TemporaryHome()
            try:
                engine = cls.create(
                    home.path,
                    model=model,
                    reranker=reranker,
                    index_type=index_type,
                    batch_size=batch_size,
                    encoder=encoder,
                    store_tokens=store_tokens,
                    token_pool=token_pool,
                    backend=backend,
                    runtime=runtime,
                    request=request,
                )
            except BaseException:
                home.cleanup()
                raise
            engine._home = home
            return engine
        path = Path(path)
        if request is not None:
            reranker, runtime = request.reranker, request.runtime
        runtime = runtime_config(runtime, backend=backend, batch_size=batch_size)
        if collection_exists(path) and not overwrite:
            engine = cls.open(path, reranker=reranker, model=model, encoder=encoder, runtime=runtime)
            found = len(engine.collection.shards) if isinstance(engine.collection, ShardedCollection) else None
            if shards is not None and found != shards:
                engine.close()
                raise UsageError(
                    f"collection {path} {f'has {found} shards' if found else 'is not sharded'}, but "
                    f"--shards {shards} was given; index into a new directory (or with --overwrite)"
                )
            if store_tokens and engine.collection.token_store is None:
                engine.close()
                raise UsageError(
                    f"collection {path} was built without token storage; "
                    "re-index with --overwrite to store tokens (or drop --store-tokens)"
                )
            stored = engine.collection.token_store
            factory = _factory_of(engine.collection)
            if not _same_index_type(index_type, engine.collection.manifest.index_type, factory):
                engine.close()
                raise UsageError(
                    f"collection {path} has a {factory} index, not {index_type}; index into a new "
                    "directory (or with --overwrite) to change it"
                )
            if isinstance(store_tokens, str) and stored is not None and stored.encoding != store_tokens:
                engine.close()
                raise UsageError(
                    f"collection {path} stores {stored.encoding} tokens, not {store_tokens}; convert them "
                    f"with 'twostage tokens {path} --convert {store_tokens}' (or name no encoding)"
                )
            if token_pool is not None and stored is not None and stored.pool != token_pool:
                engine.close()
                raise UsageError(
                    f"collection {path} pools its tokens by {stored.pool:g}, not {token_pool:g}; index "
                    "into a new directory (or with --overwrite) to change it"
                )
            return engine
        # auto: the measured choice where 'twostage info --backends' cached one, else the preference order (a first
        # run costs one export, not a minute of measuring every backend)
        device, chosen = runtime.placement()
        chosen = "auto" if measured(runtime.backend, device) else chosen
        encoder = encoder or BiEncoder(
            model, device=device, batch_size=runtime.batch_size, backend=chosen, threads=runtime.threads
        )
        create = Collection.create if shards is None else partial(ShardedCollection.create, shards=shards)
        collection = create(
            path,
            model_name=encoder.name,
            model_fingerprint=encoder.fingerprint,
            dimension=encoder.dimension,
            normalized=encoder.normalize,
            index_type=index_type,
            overwrite=overwrite,
            store_tokens=store_tokens,
            token_pool=token_pool,
            extra={"backend": encoder.backend},
        )
        return cls(collection, encoder, reranker, runtime=runtime)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        reranker: Reranker | str | None = DEFAULT_RERANKER,
        model: str | None = None,
        encoder: BiEncoder | None = None,
        batch_size: int | None = None,
        backend: str | None = None,
        runtime: RuntimeConfig | None = None,
        ray: str | None = None,
        request: SearchRequest | None = None,
    ) -> Engine:
        """Open an existing collection (single or sharded) with the bi-encoder that built it; a different bi-encoder
        is refused. ``ray`` ("auto" or a cluster address) serves a sharded collection's shards from Ray actors.

        ``runtime`` (with the ``backend=``/``batch_size=`` shorthands) as in :meth:`create`. Queries are encoded with
        ``compatible_query_backend(<the collection's backend>, <the requested one>)``: an int8 collection keeps its
        CPU-only backend, so it runs on the CPU under device ``auto`` and is refused under an explicit ``cuda``.
        ``request`` (a :class:`SearchRequest`, as the CLI and eval build it) gives the reranker and runtime instead."""
        if request is not None:
            reranker, runtime = request.reranker, request.runtime
        runtime = runtime_config(runtime, backend=backend, batch_size=batch_size)
        if ray is not None:
            from .distributed import RayShardedCollection  # imported only when asked: importing ray is slow

            collection = RayShardedCollection.open(path, address=ray)
        else:
            collection = open_collection(path)
        manifest = collection.manifest
        stored_backend = manifest.extra.get("backend")
        try:
            device, query_backend = query_placement(manifest, runtime, path)
            encoder = encoder or BiEncoder(
                model or manifest.model_name,
                device=device,
                batch_size=runtime.batch_size,
                backend=query_backend,
                threads=runtime.threads,
            )
        except BaseException:
            collection.close()
            raise
        if compatible_query_backend(stored_backend, encoder.backend) != encoder.backend:
            collection.close()
            raise UsageError(
                f"collection {path} was built with the {stored_backend} backend; its vectors can only be searched "
                f"with that backend, not {encoder.backend}"
            )
        if encoder.fingerprint != manifest.model_fingerprint:
            collection.close()
            raise UsageError(
                f"collection {path} was built with bi-encoder {manifest.model_name!r} "
                f"(fingerprint {manifest.model_fingerprint[:12]}), but {encoder.name!r} "
                f"(fingerprint {encoder.fingerprint[:12]}) was given: its vectors are not comparable. "
                f"Search with the same model, or re-index into a new directory."
            )
        return cls(collection, encoder, reranker, runtime=runtime)

    def close(self) -> None:
        """Commit and close the collection (an in-memory one is deleted). Safe to call twice."""
        self.collection.close()
        if self._home is not None:
            self._home.cleanup()

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the collection, committed, to the directory ``path`` (new or empty; an existing collection only with
        ``overwrite``), openable with :meth:`open`; this engine keeps working on its own copy."""
        return save_collection(self.collection, path, overwrite=overwrite)

    def __len__(self) -> int:
        """The number of documents in the collection."""
        return len(self.collection)

    def count(self) -> int:
        """The number of documents in the collection (``len(engine)``)."""
        return len(self.collection)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reranker
    @property
    def reranker(self) -> Reranker | None:
        """The second stage, loaded on first use (so ``index`` and ``--no-rerank`` never pay for it)."""
        if self._reranker is None and self._reranker_spec is not None and not isinstance(self._reranker_spec, Reranker):
            self._reranker, notice = load_reranker(
                self._reranker_spec,
                encoder=self.encoder,
                explicit=self._reranker_explicit,
                device=self.device,
                batch_size=self.runtime.batch_size,
                backend="auto" if measured(self.runtime.backend, self.device) else self.backend,
                threads=self.runtime.threads,
                token_store=self.collection.token_store.get_many if self.collection.token_store is not None else None,
            )
            if notice:
                self.notices.append(notice)
                _warn_once(notice)
            if self._reranker is None:
                self._reranker_spec = None
        return self._reranker

    # ----------------------------------------------------------------- writes
    def add(
        self,
        documents: Iterable[Document | Mapping[str, Any] | str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> AddReport:
        """Encode and store documents (``Document``, dicts with id and text, or plain texts, which get new ids) in
        committed steps; an id already present is replaced, an unchanged one skipped. ``report.ids`` lists every
        document's id in input order."""
        report = AddReport()
        started = time.perf_counter()
        if isinstance(documents, Sequence):  # a list is checked whole first: bad input anywhere changes nothing
            documents = _checked(documents)
        seen: set[str] = set()
        # on a GPU a chunk is large enough to keep the device busy. A bounded pipeline (twostage/writer.py): while
        # this thread reads and checks chunk i+2, the encoder thread encodes chunk i+1 and the writer thread stores
        # chunk i (its own SQLite transaction, in order)
        size = ADD_CHUNK if getattr(self.encoder, "device_encoder", None) is None else DEVICE_ADD_CHUNK
        with (
            _committed_even_on_error(self.collection),
            OrderedWriter() as write,
            OrderedWriter(name="twostage-encoder") as encode,
        ):
            for chunk in _chunks((as_document(d) for d in documents), size):
                for doc in chunk:
                    if doc.id in seen:
                        raise UsageError(f"document id {doc.id!r} appears twice in the input")
                    seen.add(doc.id)
                    report.ids.append(doc.id)
                existing = {doc.id: doc for doc in self.collection.get([d.id for d in chunk]) if doc is not None}
                todo = [d for d in chunk if not _same(existing.get(d.id), d)]
                report.unchanged += len(chunk) - len(todo)
                replaced = sum(1 for d in todo if d.id in existing)
                report.replaced += replaced
                report.added += len(todo) - replaced
                if todo:
                    encode(partial(self._encode_chunk, todo, report, write))
                if progress:
                    progress(len(chunk))
        self.collection.commit()
        report.seconds = time.perf_counter() - started
        return report

    def _encode_chunk(
        self, todo: list[Document], report: AddReport, write: Callable[[Callable[[], object]], None]
    ) -> None:
        """The encoder thread's step: vectors (and tokens) of the changed documents, handed to the writer thread."""
        texts = [d.text_for_encoding() for d in todo]
        tokens = terms = None
        if self.collection.token_store is None:
            encoded = self.encoder.encode_documents(texts)
        else:  # one forward pass gives both the document vectors and the MaxSim token vectors
            store = encode_for_store(self.encoder, texts, token_ids=self.collection.token_df is not None)
            hits = self.encoder.through_cache(texts, store.embeddings)
            encoded = EncodeResult(store.embeddings, truncated=store.truncated, cache_hits=hits)
            tokens, terms = store.tokens, store.token_ids
        write(partial(self.collection.upsert, todo, encoded.embeddings, tokens=tokens, terms=terms))
        report.truncated += encoded.truncated
        report.cache_hits += encoded.cache_hits

    def upsert(
        self,
        documents: Iterable[Document | Mapping[str, Any] | str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> AddReport:
        """:meth:`add` by its other name: documents whose id is present replace the stored ones, new ids are added."""
        return self.add(documents, progress=progress)

    def delete(self, ids: Sequence[str]) -> DeleteReport:
        """Remove documents by id; they never come back in results. Unknown ids are reported, not an error."""
        with _committed_even_on_error(self.collection):
            result = self.collection.delete([str(i) for i in ids])
        self.collection.commit()
        return DeleteReport(deleted=list(result.deleted), missing=list(result.missing))

    # ----------------------------------------------------------------- reads
    def search(self, query: str, request: SearchRequest | None = None, **options: Any) -> SearchResult:
        """The top ``top_k`` of ``candidate_depth`` first-stage candidates, the top ``rerank_depth`` of them reranked
        by the second stage unless ``rerank`` is False. ``request`` holds the options (:class:`SearchRequest`, which
        documents each); keyword ``options`` override its fields (``k``/``top_n``, the old names, still work).
        The levers ``prf``, ``query_tokens`` and ``fusion`` left at "default" take ``MAXSIM_DEFAULTS``' setting when
        MaxSim reranks the search, else off."""
        return self.search_many([query], request, **options)[0]

    def search_many(
        self, queries: Sequence[str], request: SearchRequest | None = None, **options: Any
    ) -> list[SearchResult]:
        """Several queries at once: one encoder pass, one index search, one batched rerank pass."""
        request = SearchRequest.from_options(request, **options)
        queries = list(queries)
        _check_queries(queries)
        stage = request.stage
        maxsim = request.rerank and isinstance(self.reranker, MaxSimReranker)
        prf, query_tokens, fusion = request.levers(MAXSIM_DEFAULTS if maxsim else None)
        notices = []
        size = len(self.collection)
        k = request.candidate_depth
        if k > size:
            notices.append(f"k={k} is larger than the collection ({size} documents); searched all of them")
        n = len(queries)

        candidate_lists, encode_s, search_s = self._retrieve(
            stage, queries, min(k, max(size, 1)), request.filter, request.ef_search, request.nprobe, prf
        )

        docs = self._fetch(candidate_lists)
        reranker = self._second_stage(query_tokens, fusion) if request.rerank else None
        if request.rerank and reranker is None and self._reranker_spec is None and not self.notices:
            notices.append("no reranker configured; showing first-stage order")
        hit_lists = [
            [hit_from(docs[doc_id], score, rank) for rank, (doc_id, score) in enumerate(cands, start=1)]
            for cands in candidate_lists
        ]
        rerank_s = 0.0
        if reranker is not None:
            hit_lists, rerank_s = rerank_hits(reranker, queries, hit_lists, request.rerank_depth)
        results = []
        for query, cands, hits in zip(queries, candidate_lists, hit_lists):
            timings = Timings(encode_s=encode_s / n, search_s=search_s / n, rerank_s=rerank_s / n)
            results.append(
                SearchResult(
                    query=query,
                    hits=hits[: request.top_k],
                    timings=timings,
                    candidates=len(cands),
                    reranker=getattr(getattr(reranker, "inner", reranker), "name", None),  # the model, not a fusion
                    notices=list(notices),  # this search's own; the engine's (a fallback) are in self.notices
                )
            )
        return results

    def search_queries(
        self,
        queries: Mapping[str, str],
        request: SearchRequest | None = None,
        *,
        one_at_a_time: bool = False,
        progress: Callable[[int], None] | None = None,
        **options: Any,
    ) -> dict[str, SearchResult]:
        """``qid -> query`` searched with ``search_many``'s request: what ``twostage search --queries Q --run OUT`` and
        every ``twostage eval`` system run. ``one_at_a_time`` makes each query's timings its own latency."""
        request = SearchRequest.from_options(request, **options)
        qids = list(queries)
        if not one_at_a_time:
            results = dict(zip(qids, self.search_many([queries[q] for q in qids], request)))
            if progress:
                progress(len(qids))
            return results
        out = {}
        for qid in qids:
            out[qid] = self.search_many([queries[qid]], request)[0]
            if progress:
                progress(1)
        return out

    def _retrieve(
        self,
        stage: FirstStage,
        queries: list[str],
        k: int,
        filter: dict[str, Any] | None,
        ef_search: int | None,
        nprobe: int | None,
        prf: PRF | None,
    ) -> tuple[list[list[tuple[str, float]]], float, float]:
        """The first stage: dense (query vectors, PRF if asked), lexical (BM25 over the collection) or both fused;
        returns the candidate lists and the seconds spent encoding and searching, for all queries together."""
        started = time.perf_counter()
        encode_s = 0.0
        dense = lexical = None
        if stage.uses_dense:
            vectors = self.encoder.encode_queries(queries)
            encode_s = time.perf_counter() - started
            dense = self.collection.search(vectors, k, filter=filter, ef_search=ef_search, nprobe=nprobe)
            if prf is not None:
                vectors = self._feedback(vectors, dense, prf)
                dense = self.collection.search(vectors, k, filter=filter, ef_search=ef_search, nprobe=nprobe)
        if stage.uses_lexical:
            lexical = self.collection.lexical_search(queries, k, filter)
        if dense is None or lexical is None:
            lists = dense if lexical is None else lexical
        else:
            lists = stage.fuse(dense, lexical, k)
        return lists, encode_s, time.perf_counter() - started - encode_s

    def _feedback(self, vectors: Any, candidate_lists: list[list[tuple[str, float]]], prf: PRF) -> Any:
        """Each query vector moved towards its top ``prf.k`` candidates' stored vectors (``retriever.prf.rocchio``)."""
        return np.stack(
            [
                rocchio(vector, self.collection.embeddings_of([doc_id for doc_id, _ in cands[: prf.k]]), prf)
                for vector, cands in zip(vectors, candidate_lists)
            ]
        )

    def _second_stage(self, query_tokens: QueryTokens | None, fusion: Fusion | None) -> Reranker | None:
        """The reranker for one search: MaxSim with its query-token option, wrapped to fuse scores when asked."""
        reranker = self.reranker
        if reranker is None:
            return None
        if query_tokens is not None and (isinstance(reranker, MaxSimReranker) or query_tokens != QueryTokens()):
            if not isinstance(reranker, MaxSimReranker):
                raise UsageError(
                    f"query token options ({query_tokens.label}) apply to the maxsim reranker only, not {reranker.name}"
                )
            reranker = reranker.with_query_tokens(query_tokens, self.token_idf() if query_tokens.weighting else None)
        return FusedReranker(reranker, fusion) if fusion is not None else reranker

    def token_idf(self) -> Callable[[Any], Any]:
        """IDF of token ids in this collection (``indexes.token_df``), recounted first if it is not in step."""
        table = self.collection.token_df
        if table is None:
            raise UsageError(
                f"IDF query weighting needs a collection built with --store-tokens ({self.collection.path} was not)"
            )
        if len(table) != len(self.collection):
            table.rebuild(
                ((d.id, d.text_for_encoding()) for d in self.collection.iter_documents()),
                lambda texts: content_token_ids(self.encoder, texts),
            )
        return table.idf

    def _fetch(self, candidate_lists: list[list[tuple[str, float]]]) -> dict[str, Document]:
        ids = list({doc_id for cands in candidate_lists for doc_id, _ in cands})
        return {doc.id: doc for doc in self.collection.get(ids) if doc is not None}

    @overload
    def get(self, ids: str) -> Document | None: ...
    @overload
    def get(self, ids: Sequence[str]) -> list[Document | None]: ...
    def get(self, ids: str | Sequence[str]) -> Document | None | list[Document | None]:
        """The stored document of one id, or of each id in a list (None where there is none)."""
        if isinstance(ids, str):
            return self.collection.get([ids])[0]
        return self.collection.get([str(i) for i in ids])

    def info(self) -> dict[str, Any]:
        """Manifest, counts and models, for ``twostage info`` and the server's ``/stats``."""
        stats = dict(self.collection.stats())
        stats["bi_encoder"] = {
            "name": self.encoder.name,
            "origin": self.encoder.origin,
            "source": str(self.encoder.source),
            "backend": self.encoder.backend_tag,
        }
        spec = self._reranker_spec
        stats["reranker"] = getattr(spec, "name", spec) if spec is not None else None
        return stats


#: notices already given as warnings in this process
_WARNED: set[str] = set()


def _warn_once(notice: str) -> None:
    """Tell a Python API user about a reranker fallback once per process (the CLI and server say it their own way)."""
    if notice not in _WARNED:
        _WARNED.add(notice)
        warnings.warn(notice, RerankerFallbackWarning, stacklevel=4)


@contextmanager
def _committed_even_on_error(collection: CollectionLike) -> Iterator[None]:
    """After a failed write, commit what SQLite already holds (best effort) so that the writer lock is let go:
    a long-running server must not keep other writers out after one bad request."""
    try:
        yield
    except BaseException:
        try:
            collection.commit()
        except Exception:  # the write's own error is the one to report
            pass
        raise


def _checked(documents: Sequence[Document | Mapping[str, Any]]) -> list[Document]:
    """Every document converted and its id checked for repeats before the first is stored (all-or-nothing adds)."""
    docs, seen = [as_document(d) for d in documents], set()
    for doc in docs:
        if doc.id in seen:
            raise UsageError(f"document id {doc.id!r} appears twice in the input")
        seen.add(doc.id)
    return docs


def _factory_of(collection: CollectionLike) -> str:
    """The FAISS factory string a collection's vectors are indexed with (a sharded one's first shard's: all alike)."""
    shards = getattr(collection, "shards", None)
    return (shards[0] if shards else collection).manifest.factory


def _same_index_type(given: str, recorded: str, factory: str) -> bool:
    """Whether ``index_type`` as given to a resumed ``create`` names the index the collection has: ``auto``, the name
    it was built with, the kind its factory string is (flat, hnsw, ivfpq) or the factory string itself."""
    wanted = given.strip().lower()
    kind = (
        "flat"
        if factory == "Flat"
        else "hnsw"
        if factory.startswith("HNSW")
        else "ivfpq"
        if factory.startswith("IVF") and ",PQ" in factory
        else factory.lower()
    )
    return wanted in ("auto", recorded.strip().lower(), kind, factory.lower())


def _same(old: Document | None, new: Document) -> bool:
    return old is not None and (old.text, old.title, old.metadata) == (new.text, new.title, new.metadata)


def _chunks(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def query_placement(manifest: ManifestLike, runtime: RuntimeConfig, path: str | Path) -> tuple[str, str]:
    """The device and backend that encode queries for the collection ``manifest`` describes (at ``path``, for the
    message): ``compatible_query_backend`` of its backend and the requested one, ``auto`` being this machine's cached
    choice for its model (never measured at query time). An int8 collection's CPU-only backend runs on the CPU under
    device ``auto`` and is refused under an explicit ``cuda``."""
    stored_backend = manifest.extra.get("backend")
    device, wanted = runtime.placement()
    if measured(runtime.backend, device):
        wanted = stage_backend("auto", device, "bi-encoder", manifest.model_fingerprint)
    query_backend = compatible_query_backend(stored_backend, wanted)
    if query_backend not in FLOAT_BACKENDS and device != "cpu":
        if runtime.device != "auto":
            raise UsageError(
                f"collection {path} was built with the {stored_backend} backend, which runs on the CPU "
                f"only; search it with --device cpu (or auto)"
            )
        device = "cpu"
    return device, query_backend


def _check_queries(queries: Sequence[str]) -> None:
    if not queries:
        raise UsageError("no queries given")
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            where = f"query {i + 1}" if len(queries) > 1 else "the query"
            raise UsageError(f"{where} is empty; give some words to search for")


def hit_from(doc: Document, score: float, rank: int) -> Hit:
    """A first-stage hit for a stored document at ``rank`` with ``score`` (no rerank score yet)."""
    return Hit(
        doc_id=doc.id,
        text=doc.text,
        title=doc.title,
        metadata=dict(doc.metadata),
        retrieval_score=float(score),
        retrieval_rank=rank,
    )


def rerank_hits(
    reranker: Reranker, queries: Sequence[str], hit_lists: Sequence[list[Hit]], depth: int | None = None
) -> tuple[list[list[Hit]], float]:
    """The engine's second stage: each query's top ``depth`` hits (all when None) scored in one batched pass and
    sorted by it, the rest beneath in first-stage order; returns the hit lists and the seconds spent scoring.
    Hits go by doc id as well as text, so MaxSim reads stored token vectors instead of encoding passages."""
    candidates = [hits[:depth] for hits in hit_lists]  # a Hit is the reranker's candidate: no other form
    started = time.perf_counter()
    score_lists = reranker.score_candidates(list(queries), candidates) if any(candidates) else [[] for _ in queries]
    seconds = time.perf_counter() - started
    return [_apply_rerank(hits, scores) if hits else hits for hits, scores in zip(hit_lists, score_lists)], seconds


def _apply_rerank(hits: list[Hit], scores: Sequence[float]) -> list[Hit]:
    """Attach second-stage scores to the first ``len(scores)`` hits and sort those by them (ties keep first-stage
    order); hits beyond the rerank depth follow in first-stage order, without a rerank score."""
    head, rest = hits[: len(scores)], hits[len(scores) :]
    for hit, score in zip(head, scores):
        hit.rerank_score = float(score)
    ordered = sorted(head, key=lambda h: -h.rerank_score) + rest  # sorted() is stable
    for rank, hit in enumerate(ordered, start=1):
        hit.rerank_rank = rank
    return ordered
