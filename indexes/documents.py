"""The one document record every stage passes around: an external string id, its text, an optional title and metadata."""
from __future__ import annotations

import hashlib
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
        return f"{self.title}. {self.text}" if self.title else self.text


def text_hash(text: str) -> str:
    """Stable content hash used to key cached embeddings and to skip unchanged documents on re-runs."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
