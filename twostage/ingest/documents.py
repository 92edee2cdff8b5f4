"""Each document checked once, before anything is written: a ``Document`` or a dict with id/text (title and
metadata optional), its id one a TREC run can hold, its strings ones UTF-8 can store, no id twice in one input."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from twostage.errors import UsageError
from twostage.indexes.documents import Document, id_problem, unicode_problem


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


def checked_stream(documents: Iterable[Document | Mapping[str, Any] | str]) -> Iterator[Document]:
    """Each document converted and checked as it comes, an id seen before in this input refused. A list is checked
    whole before the first is yielded (bad input anywhere in it changes nothing); any other iterable is streamed."""
    if isinstance(documents, Sequence):
        yield from list(_unique(as_document(d) for d in documents))
    else:
        yield from _unique(as_document(d) for d in documents)


def _unique(documents: Iterable[Document]) -> Iterator[Document]:
    seen: set[str] = set()
    for doc in documents:
        if doc.id in seen:
            raise UsageError(f"document id {doc.id!r} appears twice in the input")
        seen.add(doc.id)
        yield doc


def same_document(old: Document | None, new: Document) -> bool:
    """Whether ``new`` is what is stored already (``old``, None when absent): an unchanged document is skipped."""
    return old is not None and (old.text, old.title, old.metadata) == (new.text, new.title, new.metadata)
