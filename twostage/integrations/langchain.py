"""LangChain adapters: a retriever over a twostage collection and a document compressor over any twostage reranker.

A hit becomes a ``langchain_core`` ``Document`` with ``id`` = the doc id, ``page_content`` = the text (of the passage
that matched, in a document split into passages), and metadata = the document's own metadata plus ``title`` (when it
has one), the scores: ``relevance_score`` (the final one, the key LangChain's rerankers use), ``retrieval_score`` and
``rerank_score``, and for a passage of a longer document ``passage`` (number, count, character span, page, headings).
These keys win over metadata fields of the same name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun, Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import ConfigDict, Field
except ImportError:  # pragma: no cover - the extra is installed in the test environment
    raise ImportError(
        "twostage.integrations.langchain needs langchain-core: pip install 'twostage[langchain]'"
    ) from None

from twostage import Engine, Hit, Ranker

from .common import hit_metadata


def hit_to_document(hit: Hit) -> Document:
    """One search hit as a LangChain ``Document`` (see the module's docstring for the metadata keys)."""
    metadata = {**hit_metadata(hit), "relevance_score": hit.score}
    return Document(id=hit.doc_id, page_content=hit.text, metadata=metadata)


class TwostageRetriever(BaseRetriever):
    """Two-stage search over a twostage collection as a LangChain retriever: ``engine.search(query, ...)``'s hits as
    ``Document`` objects, best first. ``search_kwargs`` go to ``Engine.search`` as they are (``filter``,
    ``first_stage``, ``rerank``, ...)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    #: the open collection searched (``Engine.open(path)`` or ``Engine.in_memory()``)
    engine: Engine
    #: documents returned per query
    top_k: int = 4
    #: further ``Engine.search`` options
    search_kwargs: dict[str, Any] = Field(default_factory=dict)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        result = self.engine.search(query, top_k=self.top_k, **self.search_kwargs)
        return [hit_to_document(hit) for hit in result.hits]


class TwostageCompressor(BaseDocumentCompressor):
    """A twostage reranker as a LangChain document compressor: the documents another retriever found, scored by the
    second stage (``Ranker.rerank``) and cut to the best ``top_k``, each with its ``relevance_score`` in metadata
    (the rest of its metadata and its id kept)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    #: the models (``Ranker(reranker="cross-encoder:PATH")``, ``Ranker(reranker="maxsim")``, ...)
    ranker: Ranker
    #: documents kept per query (None: all, reordered)
    top_k: int | None = 4

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """``documents`` reordered by the reranker's score for ``query``, the best ``top_k``."""
        rows = self.ranker.rerank(query, [doc.page_content for doc in documents], top_k=self.top_k)
        out = []
        for row in rows:
            doc = documents[row["corpus_id"]]
            metadata = {**doc.metadata, "relevance_score": row["score"]}
            out.append(Document(id=doc.id, page_content=doc.page_content, metadata=metadata))
        return out
