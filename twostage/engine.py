"""The engine: a collection, the bi-encoder that built it and a reranker, composed into index-and-search."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast, overload

import numpy as np

from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.protocols import CollectionLike
from twostage.indexes.sharded import ShardedCollection, collection_exists, open_collection
from twostage.reranker.base import Reranker
from twostage.reranker.loading import RerankerFallbackWarning, load_reranker
from twostage.reranker.maxsim import MaxSimReranker, QueryTokens, content_token_ids
from twostage.reranker.resolve import DEFAULT_RERANKER
from twostage.reranker.score_fusion import FusedReranker, Fusion
from twostage.retriever.biencoder import BiEncoder
from twostage.retriever.fusion import FirstStage
from twostage.retriever.prf import PRF, rocchio
from twostage.runtime.autotune import measured
from twostage.runtime.backends import compatible_query_backend
from twostage.runtime.config import RuntimeConfig, runtime_config
from twostage.runtime.models import DEFAULT_BI_ENCODER

from .errors import UsageError
from .grouping import best_passages, passage_depth, passage_hits, settle
from .ingest.passages import Splitter
from .ingest.writes import AddReport, DeleteReport, add_documents, delete_documents
from .memory import TemporaryHome, save_collection
from .placement import query_placement
from .relevance import relevance_fit, score_relevance
from .rerank_step import rerank_hits
from .results import SearchResult, Timings
from .resume import check_resumed
from .search_request import SearchRequest, check_queries

#: the second-stage levers a MaxSim search uses unless it names others: Rocchio feedback from the top 10, [CLS]/[SEP]
#: among the query tokens, and 0.8 x min-max(MaxSim) + 0.2 x min-max(first stage). Chosen on half of cacm and
#: confirmed on msmarco-dl20 by benchmarks/bench_levers.py (README, "Second-stage levers").
MAXSIM_DEFAULTS = {"prf": "10:0.5", "query_tokens": "special", "fusion": "minmax:0.8"}


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
        #: cuts documents into passages that fit the bi-encoder's window (None: the encoder's own, ``ingest.passages``)
        self.splitter: Splitter | None = None

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
            try:
                check_resumed(engine.collection, path, shards, store_tokens, index_type, token_pool)
            except UsageError:
                engine.close()
                raise
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
            from .shards.collection import RayShardedCollection  # imported only when asked: importing ray is slow

            # no iter_documents through Ray (IDF recounting and folder sync are not served there): not quite a
            # CollectionLike, and said so here rather than in the protocol
            collection = cast(CollectionLike, RayShardedCollection.open(path, address=ray))
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

    def set_reranker(self, reranker: Reranker | str | None, *, explicit: bool | None = None) -> None:
        """Use ``reranker`` (a Reranker, a spec loaded on first use, or None for none) as the second stage from now
        on: how a Ray engine swaps in its replica pool."""
        self._reranker_spec = reranker
        self._reranker_explicit = explicit
        self._reranker = reranker if isinstance(reranker, Reranker) else None

    # ----------------------------------------------------------------- writes
    def add(
        self,
        documents: Iterable[Document | Mapping[str, Any] | str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> AddReport:
        """Encode and store documents (``Document``, dicts with id and text, or plain texts, which get new ids) in
        committed steps (``twostage.ingest.writes``); an id already present is replaced, an unchanged one skipped. A list
        is checked whole first: bad input anywhere changes nothing. ``report.ids`` lists every document's id in input
        order."""
        return add_documents(self.collection, self.encoder, documents, progress, self.splitter)

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
        return delete_documents(self.collection, ids)

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
        check_queries(queries)
        stage = request.stage
        maxsim = request.rerank and isinstance(self.reranker, MaxSimReranker)
        prf, query_tokens, fusion = request.levers(MAXSIM_DEFAULTS if maxsim else None)
        notices = []
        size = len(self.collection)
        k = request.candidate_depth
        if k > size:
            notices.append(f"k={k} is larger than the collection ({size} documents); searched all of them")
        n = len(queries)
        depth = passage_depth(k, size, self.collection.passage_count(), request.group_by)
        candidate_lists, vectors, encode_s, search_s = self._retrieve(
            stage, queries, depth, request.filter, request.ef_search, request.nprobe, prf
        )
        grouped = passage_hits(self.collection, candidate_lists, request.group_by, k)
        candidate_lists, hit_lists, runners_up = grouped.candidate_lists, grouped.hit_lists, grouped.runners_up
        reranker = self._second_stage(query_tokens, fusion) if request.rerank else None
        if request.rerank and reranker is None and self._reranker_spec is None and not self.notices:
            notices.append("no reranker configured; showing first-stage order")
        rerank_s = 0.0
        if reranker is not None:
            hit_lists, rerank_s = rerank_hits(reranker, queries, hit_lists, request.rerank_depth, runners_up)
        fit = relevance_fit(self.encoder, reranker, request.min_score)  # BM25 encodes a query for it only on min_score
        if fit is not None and (vectors is not None or request.min_score is not None):
            encode_s += score_relevance(fit, self, queries, vectors, reranker, hit_lists, k)
        settle(hit_lists, queries, self.encoder if request.explain else None, request.top_k)
        results = []
        for query, cands, hits in zip(queries, candidate_lists, hit_lists):
            if request.min_score is not None:
                hits = [h for h in hits[: request.top_k] if (h.relevance or 0.0) >= request.min_score]
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
        filter: Mapping[str, Any] | None,
        ef_search: int | None,
        nprobe: int | None,
        prf: PRF | None,
    ) -> tuple[list[list[tuple[str, float]]], Any, float, float]:
        """The first stage: dense (query vectors, PRF if asked), lexical (BM25 over the collection) or both fused;
        returns the candidate lists, the query vectors (before feedback; None without a dense stage) and the
        seconds spent encoding and searching, for all queries together."""
        started = time.perf_counter()
        encode_s = 0.0
        dense = lexical = vectors = None
        if stage.uses_dense:
            vectors = self.encoder.encode_queries(queries)
            encode_s = time.perf_counter() - started
            dense = self.collection.search(vectors, k, filter=filter, ef_search=ef_search, nprobe=nprobe)
            if prf is not None:
                moved = self._feedback(vectors, dense, prf)
                dense = self.collection.search(moved, k, filter=filter, ef_search=ef_search, nprobe=nprobe)
        if stage.uses_lexical:
            lexical = self.collection.lexical_search(queries, k, filter)
        if dense is None or lexical is None:
            lists = cast(list[list[tuple[str, float]]], dense if lexical is None else lexical)  # every stage has one
        else:
            lists = stage.fuse(dense, lexical, k)
        return lists, vectors, encode_s, time.perf_counter() - started - encode_s

    def _feedback(self, vectors: Any, candidate_lists: list[list[tuple[str, float]]], prf: PRF) -> Any:
        """Each query vector moved towards its top ``prf.k`` documents' best passages' stored vectors
        (``retriever.prf.rocchio``): one passage per document, so a long document's many passages cannot pull the
        query towards themselves."""
        return np.stack(
            [
                rocchio(vector, self.collection.embeddings_of(best_passages(cands, prf.k)), prf)
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
        if len(table) != self.collection.passage_count():
            table.rebuild(
                ((d.id, d.text_for_encoding()) for d in self.collection.iter_passages()),
                lambda texts: content_token_ids(self.encoder, texts),
            )
        return table.idf

    @overload
    def get(self, ids: str) -> Document | None: ...  # type: ignore[overload-overlap]  # a str is not a list of ids
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
