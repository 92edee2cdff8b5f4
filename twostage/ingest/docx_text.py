"""Word documents (.docx): paragraphs and tables in document order (python-docx), headings (the built-in
"Heading N" and "Title" styles) as sections, titled by the core properties' title, else the first heading.

Chosen by measurement (docs/guides/documents.md): python-docx read a generated 200-paragraph document in 129 ms
against docx2python's 282 ms, both recovering every word, and it exposes the paragraph styles headings come from.
"""

from __future__ import annotations

import re
import zipfile

from twostage.runtime.optional import require

from .extract import Extracted, close_sections
from .files import FileProblem
from .text_formats import checked, first_title

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


def extract_docx(data: bytes, label: str) -> Extracted:
    docx = require("docx", "documents", "reading DOCX files")
    import io

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise FileProblem(label, f"not a readable .docx file (damaged, or not a Word document): {err}") from None
    except Exception as err:  # python-docx raises its own PackageNotFoundError and lxml's errors
        raise FileProblem(label, f"not a readable .docx file: {type(err).__name__}: {err}") from None
    parts: list[str] = []
    headings: list[tuple[int, str, int]] = []
    offset = 0
    for block in document.iter_inner_content():
        if hasattr(block, "rows"):  # a table: one line per row, cells separated by tabs
            text = "\n".join("\t".join(cell.text.strip() for cell in row.cells) for row in block.rows)
        else:
            text = block.text.strip()
            level = _heading_level(block)
            if level is not None and text:
                headings.append((level, " ".join(text.split()), offset))
        if not text.strip():
            continue
        parts.append(text)
        offset += len(text) + 2
    text = "\n\n".join(parts)
    title = " ".join((document.core_properties.title or "").split()) or first_title(headings)
    return checked(Extracted(text=text, title=title, sections=close_sections(headings, len(text))), label)


def _heading_level(paragraph: object) -> int | None:
    style = getattr(getattr(paragraph, "style", None), "name", "") or ""
    if style.lower() == "title":
        return 1
    found = _HEADING_STYLE.match(style.strip())
    return int(found.group(1)) if found else None
