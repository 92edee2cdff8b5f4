"""Which extractor reads which file, by suffix, and a file turned into a document with its file metadata."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass

from .docx_text import extract_docx
from .extract import Extracted, StructuredDocument
from .files import FileBytes, FoundFile
from .html_text import extract_html
from .pdf_text import extract_pdf
from .text_formats import extract_markdown, extract_text


@dataclass(frozen=True)
class Format:
    """A kind of file: its ``type`` (the metadata value) and the function that extracts it."""

    type: str
    extract: Callable[[bytes, str], Extracted]


FORMATS: dict[str, Format] = {
    ".txt": Format("text", extract_text),
    ".text": Format("text", extract_text),
    ".rst": Format("text", extract_text),
    ".md": Format("markdown", extract_markdown),
    ".markdown": Format("markdown", extract_markdown),
    ".html": Format("html", extract_html),
    ".htm": Format("html", extract_html),
    ".xhtml": Format("html", extract_html),
    ".pdf": Format("pdf", extract_pdf),
    ".docx": Format("docx", extract_docx),
}
#: what a file taken by ``--include`` but with a suffix of no known format is read as
PLAIN = FORMATS[".txt"]


def format_of(found: FoundFile) -> Format | None:
    return FORMATS.get(found.path.suffix.lower())


def file_document(found: FoundFile, read: FileBytes, fmt: Format) -> StructuredDocument:
    """The document of one file: its id, extracted text, title and the file metadata every file document carries
    (``path``, ``type``, ``size``, ``modified``, ``sha256``, ``root``; ``pages`` for a PDF; ``encoding`` when not
    UTF-8). Raises FileProblem for a file that cannot be read as its format."""
    extracted = fmt.extract(read.data, found.label)
    modified = _dt.datetime.fromtimestamp(read.modified_ns / 1e9, tz=_dt.timezone.utc)
    extracted.metadata = {
        "path": str(found.path.absolute()),
        "type": fmt.type,
        "size": read.size,
        "modified": modified.isoformat(timespec="seconds"),
        **extracted.metadata,
        "sha256": read.sha256,
        "root": str(found.root.absolute()),
    }
    return extracted.to_document(found.doc_id)
