"""What both framework adapters attach to a result."""

from __future__ import annotations

from typing import Any

from twostage import Hit


def hit_metadata(hit: Hit) -> dict[str, Any]:
    """A hit's document metadata with ``title`` (when it has one), ``retrieval_score``, ``rerank_score`` and, for a
    passage of a longer document, ``passage`` (its number, count, character span, page, headings and score) added;
    these win over metadata fields of the same name."""
    metadata: dict[str, Any] = dict(hit.metadata)
    if hit.title is not None:
        metadata["title"] = hit.title
    metadata.update(retrieval_score=hit.retrieval_score, rerank_score=hit.rerank_score)
    if hit.passage is not None:  # the passage of a longer document that matched; the hit's text is its text
        metadata["passage"] = {key: value for key, value in hit.passage.to_dict().items() if key != "text"}
    return metadata
