"""LlamaIndex adapters: a retriever over a twostage collection and a node postprocessor over any twostage reranker.

A hit becomes a ``NodeWithScore``: a ``TextNode`` with ``id_`` = the doc id, ``text`` = the text (of the passage that
matched, in a document split into passages), ``metadata`` = the document's own metadata plus ``title`` (when it has
one), ``retrieval_score``, ``rerank_score`` and, for a passage of a longer document, ``passage`` (number, count,
character span, page, headings); these win over metadata fields of the same name. ``score`` is the final score.
"""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.bridge.pydantic import Field
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
except ImportError:  # pragma: no cover - the extra is installed in the test environment
    raise ImportError(
        "twostage.integrations.llamaindex needs llama-index-core: pip install 'twostage[llamaindex]'"
    ) from None

from twostage import Engine, Hit

from .common import hit_metadata


def hit_to_node(hit: Hit) -> NodeWithScore:
    """One search hit as a LlamaIndex ``NodeWithScore`` (see the module's docstring for the metadata keys)."""
    return NodeWithScore(node=TextNode(id_=hit.doc_id, text=hit.text, metadata=hit_metadata(hit)), score=hit.score)


class TwostageRetriever(BaseRetriever):
    """Two-stage search over a twostage collection as a LlamaIndex retriever (for ``RetrieverQueryEngine`` and
    friends): ``engine.search(query, ...)``'s hits as nodes, best first. ``search_kwargs`` go to ``Engine.search``
    as they are (``filter``, ``first_stage``, ``rerank``, ...)."""

    def __init__(self, engine: Engine, top_k: int = 4, search_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.engine = engine
        self.top_k = top_k
        self.search_kwargs = dict(search_kwargs or {})

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self.engine.search(query_bundle.query_str, top_k=self.top_k, **self.search_kwargs)
        return [hit_to_node(hit) for hit in result.hits]


class TwostagePostprocessor(BaseNodePostprocessor):
    """A twostage reranker as a LlamaIndex node postprocessor: the nodes another retriever found, scored by the
    second stage (``Ranker.rerank``) on their text, reordered, cut to the best ``top_n``, their score replaced by the
    reranker's (the original kept in metadata as ``retrieval_score``)."""

    ranker: Any = Field(description="the twostage Ranker whose reranker scores the nodes")
    top_n: int | None = Field(default=4, description="nodes kept per query (None: all, reordered)")

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this postprocessor under."""
        return "TwostagePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("TwostagePostprocessor needs the query (a QueryBundle) to rerank nodes")
        if not nodes:
            return []
        texts = [item.node.get_content(metadata_mode=MetadataMode.NONE) for item in nodes]
        out = []
        for row in self.ranker.rerank(query_bundle.query_str, texts, top_k=self.top_n):
            item = nodes[row["corpus_id"]]
            item.node.metadata.setdefault("retrieval_score", item.score)
            out.append(NodeWithScore(node=item.node, score=row["score"]))
        return out
