"""What text extraction hands on: a file's text with its title, metadata and, where the format has them, its page and
section boundaries as character offsets into that text, so that a splitter can give each passage a page and a
heading path.

The extractors (one module per format) return :class:`Extracted`; :meth:`Extracted.to_document` makes the
:class:`StructuredDocument` that indexing and splitting consume. It is a plain :class:`Document` too, so code that
knows nothing of pages or sections (the stores, the readers' callers) takes it as it takes any document.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from twostage.indexes.documents import Document


@dataclass(frozen=True)
class Page:
    """Page ``number`` (1-based) of a paged format (PDF) holds ``text[start:end]``."""

    number: int
    start: int
    end: int


@dataclass(frozen=True)
class Section:
    """A heading of ``level`` (1 = top) titled ``title``: its section is ``text[start:end]``, from the heading's first
    character to the next heading of the same or a higher level (or the end of the text). Sections nest."""

    level: int
    title: str
    start: int
    end: int


@dataclass
class Extracted:
    """One file's extraction. ``pages`` and ``sections`` are sorted by ``start``; both empty where the format has
    neither (plain text)."""

    text: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    pages: list[Page] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def to_document(self, doc_id: str) -> StructuredDocument:
        return StructuredDocument(
            id=doc_id,
            text=self.text,
            title=self.title,
            metadata=dict(self.metadata),
            pages=tuple(self.pages),
            sections=tuple(self.sections),
        )


@dataclass
class StructuredDocument(Document):
    """A document that knows where its pages and sections start and end (character offsets into ``text``)."""

    pages: tuple[Page, ...] = ()
    sections: tuple[Section, ...] = ()

    def page_at(self, offset: int) -> int | None:
        """The 1-based page holding character ``offset``, or None for a format without pages."""
        return page_at(self.pages, offset)

    def heading_path(self, offset: int) -> list[str]:
        """The titles of the sections holding character ``offset``, outermost first (``["Install", "From source"]``)."""
        return heading_path(self.sections, offset)


def page_at(pages: tuple[Page, ...] | list[Page], offset: int) -> int | None:
    """The page whose span holds ``offset`` (the last page starting at or before it), or None without pages."""
    if not pages:
        return None
    index = bisect.bisect_right([p.start for p in pages], offset) - 1
    return pages[max(index, 0)].number


def heading_path(sections: tuple[Section, ...] | list[Section], offset: int) -> list[str]:
    """The titles of the sections whose span holds ``offset``, outermost (lowest level number) first."""
    holding = [s for s in sections if s.start <= offset < s.end]
    return [s.title for s in sorted(holding, key=lambda s: (s.level, s.start))]


def close_sections(headings: list[tuple[int, str, int]], length: int) -> list[Section]:
    """Sections from ``(level, title, start)`` headings in text order: each ends where the next heading of the same or
    a higher level (a smaller or equal number) starts, else at ``length``."""
    sections = []
    for i, (level, title, start) in enumerate(headings):
        end = next((s for lv, _, s in headings[i + 1 :] if lv <= level), length)
        sections.append(Section(level=level, title=title, start=start, end=end))
    return sections
