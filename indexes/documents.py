"""The one document record every stage passes around: an external string id, its text, an optional title and metadata."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Document:
    """A document as the user gave it; ``id`` is the user's id (always a string)."""

    id: str
    text: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text_for_encoding(self) -> str:
        """The string the encoders see: title and text joined, as sentence-transformers' BEIR scripts do."""
        return encoding_text(self.text, self.title)


def encoding_text(text: str, title: str | None) -> str:
    """Title and text joined, as sentence-transformers' BEIR scripts do: what both stages encode."""
    return f"{title}. {text}" if title else text


def text_hash(text: str) -> str:
    """Stable content hash used to key cached embeddings and to skip unchanged documents on re-runs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: what an id may not hold: TREC runs and qrels separate their columns by whitespace, so an id with a space, tab or
#: newline (or another control character) could be stored but never written to a run
_NOT_IN_IDS = re.compile(r"[\s\x00-\x1f\x7f]")


def id_problem(doc_id: str) -> str | None:
    """Why ``doc_id`` cannot name a document (empty, whitespace or control characters, a lone surrogate), or None."""
    if not doc_id.strip():
        return "empty id"
    if _NOT_IN_IDS.search(doc_id):
        return f"id {doc_id!r} holds whitespace or a control character, which TREC runs cannot hold"
    return unicode_problem(doc_id)


def unicode_problem(value: Any) -> str | None:
    """Why a string (or the strings inside a list or dict) cannot be stored as UTF-8, or None: a lone surrogate, which a
    JSON escape such as \\ud800 can produce."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return None if found is None else f"not valid Unicode: a lone surrogate ({found.group()!a})"
    if isinstance(value, dict):
        return next((p for k, v in value.items() for p in (unicode_problem(k), unicode_problem(v)) if p), None)
    if isinstance(value, (list, tuple)):
        return next((p for v in value if (p := unicode_problem(v))), None)
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


#: joins a document id and a passage number into the key of that passage's stored row (``doc\x1f3``); ids can never
#: hold a control character (:func:`id_problem`), so a passage key never equals or prefixes another document's id
PASSAGE_SEPARATOR = "\x1f"


@dataclass
class Passage:
    """One passage of a document: ``text`` is the document's ``text[start:end]``; ``page`` is its (1-based) page in a
    paged format (PDF), ``headings`` the titles of the sections it lies in, outermost first."""

    start: int
    end: int
    text: str
    page: int | None = None
    headings: list[str] = field(default_factory=list)

    def context(self, title: str | None) -> str | None:
        """What the encoders read before the passage: the document's title and the passage's heading path."""
        parts = [p for p in (title, *self.headings) if p]
        return " › ".join(dict.fromkeys(parts)) or None


def passage_key(doc_id: str, number: int) -> str:
    """The stored key of passage ``number`` (0-based) of ``doc_id``: the id itself for the first, so a one-passage
    document is stored exactly as before passages existed."""
    return doc_id if number == 0 else f"{doc_id}{PASSAGE_SEPARATOR}{number}"


def document_of(key: str) -> str:
    """The document id a stored key (a document id or a passage key) belongs to."""
    return key.split(PASSAGE_SEPARATOR, 1)[0]
