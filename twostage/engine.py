"""The engine: a collection, the bi-encoder that built it and a reranker, composed into index-and-search."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.reranker.base import Candidate, Reranker
from twostage.reranker.cross_encoder import DEFAULT_RERANKER
from twostage.reranker.loading import load_reranker
from twostage.reranker.maxsim import encode_with_tokens
from twostage.retriever.biencoder import BiEncoder, EncodeResult
from twostage.runtime.backends import compatible_query_backend, resolve_backend
from twostage.runtime.models import DEFAULT_BI_ENCODER

from .errors import UsageError
from .results import Hit, SearchResult, Timings

#: documents encoded and committed to SQLite per step; a crash loses at most one step's work
ADD_CHUNK = 256


@dataclass
class AddReport:
    """What an ``add``/``index`` run did, for the CLI to print and tests to check."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    truncated: int = 0
    cache_hits: int = 0
    seconds: float = 0.0

    @property
    def seen(self) -> int:
        return self.added + self.replaced + self.unchanged


@dataclass
class DeleteReport:
    deleted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def as_document(doc: Document | Mapping[str, Any]) -> Document:
    """Accept ``Document`` objects or plain dicts with id/text (title and metadata optional)."""
    if isinstance(doc, Document):
        return doc
    missing = [key for key in ("id", "text") if key not in doc]
    if missing:
        raise UsageError(f"document {dict(doc)!r:.80} has no {missing[0]!r} field")
    if not isinstance(doc["text"], str) or not doc["text"].strip():
        raise UsageError(f"document {doc['id']!r}: field 'text' must be a non-empty string")
    metadata = dict(doc.get("metadata") or {})
    metadata.update({k: v for k, v in doc.items() if k not in ("id", "text", "title", "metadata")})
    return Document(id=str(doc["id"]), text=doc["text"], title=doc.get("title"), metadata=metadata)


class Engine:
    """Index documents and search them in two stages. Build with :meth:`create` or :meth:`open`."""

    def __init__(
        self,
        collection: Collection,
        encoder: BiEncoder,
        reranker: Reranker | str | None = DEFAULT_RERANKER,
        *,
        reranker_explicit: bool = False,
        backend: str | None = None,
    ):
        self.collection = collection
        self.encoder = encoder
        #: the cross-encoder's backend (the bi-encoder's is ``encoder.backend``, fixed by the collection's vectors)
        self.backend = resolve_backend(backend)
        self._reranker_spec = reranker
        self._reranker_explicit = reranker_explicit
        self._reranker: Reranker | None = reranker if isinstance(reranker, Reranker) else None
        #: one-line messages for the user (e.g. a reranker fallback), printed once by the CLI
        self.notices: list[str] = []

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        model: str = DEFAULT_BI_ENCODER,
        reranker: Reranker | str | None = DEFAULT_RERANKER,
        index_type: str = "auto",
        overwrite: bool = False,
        batch_size: int = 32,
        encoder: BiEncoder | None = None,
        store_tokens: bool | str = False,
        backend: str | None = None,
    ) -> "Engine":
        """A new, empty collection at ``path`` (or the existing one there, resumed, when built by the same model).

        ``store_tokens`` (True, "int8" or "float16") also stores each passage's token vectors at index time, so the
        MaxSim reranker encodes no passage at query time. ``backend`` (torch, onnx, onnx-int8, openvino, openvino-int8;
        None = the default) runs both stages and is recorded in the manifest."""
        path = Path(path)
        if Collection.exists(path) and not overwrite:
            engine = cls.open(path, reranker=reranker, model=model, encoder=encoder, batch_size=batch_size, backend=backend)
            if store_tokens and engine.collection.token_store is None:
                engine.close()
                raise UsageError(
                    f"collection {path} was built without token storage; "
                    "re-index with --overwrite to store tokens (or drop --store-tokens)"
                )
            return engine
        encoder = encoder or BiEncoder(model, batch_size=batch_size, backend=resolve_backend(backend))
        collection = Collection.create(
            path,
            model_name=encoder.name,
            model_fingerprint=encoder.fingerprint,
            dimension=encoder.dimension,
            normalized=encoder.normalize,
            index_type=index_type,
            overwrite=overwrite,
            store_tokens=store_tokens,
            extra={"backend": encoder.backend},
        )
        return cls(collection, encoder, reranker, reranker_explicit=_explicit(reranker), backend=backend)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        reranker: Reranker | str | None = DEFAULT_RERANKER,
        model: str | None = None,
        encoder: BiEncoder | None = None,
        batch_size: int = 32,
        backend: str | None = None,
    ) -> "Engine":
        """Open an existing collection with the bi-encoder that built it; a different bi-encoder is refused.

        Queries are encoded with ``compatible_query_backend(<the collection's backend>, backend)``."""
        collection = Collection.open(path)
        manifest = collection.manifest
        stored_backend = manifest.extra.get("backend")
        query_backend = compatible_query_backend(stored_backend, backend)
        encoder = encoder or BiEncoder(model or manifest.model_name, batch_size=batch_size, backend=query_backend)
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
        return cls(collection, encoder, reranker, reranker_explicit=_explicit(reranker), backend=backend)

    def close(self) -> None:
        self.collection.close()

    def __enter__(self) -> "Engine":
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
                backend=self.backend,
                token_store=self.collection.token_store.get if self.collection.token_store is not None else None,
            )
            if notice:
                self.notices.append(notice)
            if self._reranker is None:
                self._reranker_spec = None
        return self._reranker

    # ----------------------------------------------------------------- writes
    def add(
        self,
        documents: Iterable[Document | Mapping[str, Any]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> AddReport:
        """Encode and store documents in committed steps; an id already present is replaced, an unchanged one skipped."""
        report = AddReport()
        started = time.perf_counter()
        seen: set[str] = set()
        for chunk in _chunks((as_document(d) for d in documents), ADD_CHUNK):
            for doc in chunk:
                if doc.id in seen:
                    raise UsageError(f"document id {doc.id!r} appears twice in the input")
                seen.add(doc.id)
            self._add_chunk(chunk, report)
            if progress:
                progress(len(chunk))
        self.collection.commit()
        report.seconds = time.perf_counter() - started
        return report

    def _add_chunk(self, chunk: list[Document], report: AddReport) -> None:
        existing = {doc.id: doc for doc in self.collection.get([d.id for d in chunk]) if doc is not None}
        todo = [d for d in chunk if not _same(existing.get(d.id), d)]
        report.unchanged += len(chunk) - len(todo)
        if not todo:
            return
        texts = [d.text_for_encoding() for d in todo]
        tokens = None
        if self.collection.token_store is None:
            encoded = self.encoder.encode_documents(texts)
        else:  # one forward pass gives both the document vectors and the MaxSim token vectors
            embeddings, tokens = encode_with_tokens(self.encoder, texts)
            encoded = EncodeResult(embeddings, truncated=self.encoder.count_truncated(texts), cache_hits=0)
        self.collection.upsert(todo, encoded.embeddings, tokens=tokens)
        report.truncated += encoded.truncated
        report.cache_hits += encoded.cache_hits
        replaced = sum(1 for d in todo if d.id in existing)
        report.replaced += replaced
        report.added += len(todo) - replaced

    def delete(self, ids: Sequence[str]) -> DeleteReport:
        """Remove documents by id; they never come back in results. Unknown ids are reported, not an error."""
        result = self.collection.delete([str(i) for i in ids])
        self.collection.commit()
        return DeleteReport(deleted=list(result.deleted), missing=list(result.missing))

    # ----------------------------------------------------------------- reads
    def search(
        self,
        query: str,
        k: int = 100,
        top_n: int = 10,
        rerank: bool = True,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> SearchResult:
        """Top ``top_n`` of ``k`` first-stage candidates, reranked by the second stage unless ``rerank`` is False.
        ``ef_search`` (HNSW) and ``nprobe`` (IVF) trade first-stage speed for recall in this search."""
        return self.search_many([query], k=k, top_n=top_n, rerank=rerank, filter=filter, ef_search=ef_search,
                                nprobe=nprobe)[0]

    def search_many(
        self,
        queries: Sequence[str],
        k: int = 100,
        top_n: int = 10,
        rerank: bool = True,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[SearchResult]:
        """Several queries at once: one encoder pass, one index search, one batched rerank pass."""
        queries = list(queries)
        _check_request(queries, k, top_n, ef_search, nprobe)
        notices = []
        size = len(self.collection)
        if k > size:
            notices.append(f"k={k} is larger than the collection ({size} documents); searched all of them")
        n = len(queries)

        t0 = time.perf_counter()
        vectors = self.encoder.encode_queries(queries)
        t1 = time.perf_counter()
        candidate_lists = self.collection.search(vectors, min(k, max(size, 1)), filter=dict(filter) if filter else None,
                                                 ef_search=ef_search, nprobe=nprobe)
        t2 = time.perf_counter()

        docs = self._fetch(candidate_lists)
        reranker = self.reranker if rerank else None
        if rerank and reranker is None and self._reranker_spec is None and not self.notices:
            notices.append("no reranker configured; showing first-stage order")
        rerank_s = 0.0
        results = []
        if reranker is not None:
            candidates = [
                [Candidate(doc_id, docs[doc_id].text_for_encoding(), score) for doc_id, score in cands]
                for cands in candidate_lists
            ]
            t3 = time.perf_counter()
            # by candidate, not text: MaxSim reads stored token vectors by doc id instead of encoding passages
            score_lists = reranker.score_candidates(queries, candidates) if any(candidates) else [[] for _ in queries]
            rerank_s = (time.perf_counter() - t3) / n
        for qi, (query, cands) in enumerate(zip(queries, candidate_lists)):
            timings = Timings(encode_s=(t1 - t0) / n, search_s=(t2 - t1) / n, rerank_s=rerank_s)
            hits = [
                _hit(docs[doc_id], score, rank)
                for rank, (doc_id, score) in enumerate(cands, start=1)
            ]
            if reranker is not None and hits:
                hits = _apply_rerank(hits, score_lists[qi])
            results.append(
                SearchResult(
                    query=query,
                    hits=hits[:top_n],
                    timings=timings,
                    candidates=len(cands),
                    reranker=getattr(reranker, "name", None),
                    notices=list(self.notices) + notices,
                )
            )
        return results

    def _fetch(self, candidate_lists: list[list[tuple[str, float]]]) -> dict[str, Document]:
        ids = list({doc_id for cands in candidate_lists for doc_id, _ in cands})
        return {doc.id: doc for doc in self.collection.get(ids) if doc is not None}

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        return self.collection.get(list(ids))

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


def _explicit(reranker: Reranker | str | None) -> bool:
    """The default cross-encoder may fall back to MaxSim when offline; anything the user named may not."""
    return not (isinstance(reranker, str) and reranker in (DEFAULT_RERANKER, "default"))


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


def _check_request(queries: Sequence[str], k: int, top_n: int, ef_search: int | None, nprobe: int | None) -> None:
    if not queries:
        raise UsageError("no queries given")
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            where = f"query {i + 1}" if len(queries) > 1 else "the query"
            raise UsageError(f"{where} is empty; give some words to search for")
    if not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be a positive integer (got {k!r})")
    if not isinstance(top_n, int) or top_n < 1:
        raise UsageError(f"top_n must be a positive integer (got {top_n!r})")
    for name, value in (("ef_search", ef_search), ("nprobe", nprobe)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"{name} must be a positive integer (got {value!r})")


def _hit(doc: Document, score: float, rank: int) -> Hit:
    return Hit(
        doc_id=doc.id,
        text=doc.text,
        title=doc.title,
        metadata=dict(doc.metadata),
        retrieval_score=float(score),
        retrieval_rank=rank,
    )


def _apply_rerank(hits: list[Hit], scores: Sequence[float]) -> list[Hit]:
    """Attach second-stage scores and sort by them; ties keep first-stage order."""
    for hit, score in zip(hits, scores):
        hit.rerank_score = float(score)
    ordered = sorted(hits, key=lambda h: -h.rerank_score)  # sorted() is stable
    for rank, hit in enumerate(ordered, start=1):
        hit.rerank_rank = rank
    return ordered
