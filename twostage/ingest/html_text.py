"""HTML pages: the main content (trafilatura: navigation, sidebars, footers and scripts left out), as Markdown-like
text whose headings become sections, titled by the page's ``<title>`` (else its first heading). A page where
trafilatura finds no main content (a very short one) falls back to all of its visible text.

Chosen by measurement (docs/guides/documents.md): trafilatura kept every paragraph of the article and none of the
boilerplate on both a page with semantic tags and the same page as ``<div>`` soup; a tag-based cut (selectolax on
``<main>``) was 200x faster but kept 94% of the boilerplate words on the ``<div>`` page.
"""

from __future__ import annotations

from twostage.runtime.optional import require

from .extract import Extracted, close_sections
from .files import FileProblem
from .text_formats import checked, first_title, markdown_headings, refuse_binary


def extract_html(data: bytes, label: str) -> Extracted:
    trafilatura = require("trafilatura", "documents", "reading HTML pages")
    refuse_binary(data, label)
    tree = trafilatura.load_html(data)
    if tree is None:
        raise FileProblem(label, "not an HTML page that can be parsed")
    page_title = " ".join((tree.findtext(".//title") or "").split()) or None
    text = trafilatura.extract(tree, output_format="markdown", include_tables=True, include_comments=False) or ""
    if not text.strip():
        text = trafilatura.html2txt(tree) or ""
    if not text.strip():
        raise FileProblem(label, "no text in the HTML page")
    headings = markdown_headings(text)
    extracted = Extracted(
        text=text, title=page_title or first_title(headings), sections=close_sections(headings, len(text))
    )
    return checked(extracted, label)
