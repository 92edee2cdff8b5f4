"""Plain text and Markdown: bytes to text (UTF-8, else the encoding charset-normalizer detects), Markdown's headings
as sections (markdown-it-py's parser, so a ``#`` inside a code block is no heading), its title from YAML front matter
or the first heading. A Markdown document's text is its source as written: offsets point into the file a user edits.
"""

from __future__ import annotations

import codecs
import re

from .extract import Extracted, close_sections
from .files import FileProblem

#: a file whose first bytes hold more than this share of control characters (other than tab, newline, form feed and
#: carriage return) is binary, whatever its suffix
_CONTROL_SHARE = 0.05
_TEXT_CONTROLS = {9, 10, 12, 13, 27}
_MOST_COMMON = "cp1252"
_TITLE_LINE = re.compile(r"^title:[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def decode_text(data: bytes, label: str) -> tuple[str, str]:
    """The text of a text file and the encoding it was read in: UTF-8 (with or without BOM), UTF-16/32 with a BOM,
    else the encoding charset-normalizer finds; binary content or an undetectable encoding is a FileProblem."""
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
    ):
        if data.startswith(bom):
            return _decoded(data, encoding, label), encoding.replace("-sig", "")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _decoded(data, "utf-16", label), "utf-16"
    refuse_binary(data, label)
    try:
        return _clean(data.decode("utf-8")), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None or best.encoding is None:
        raise FileProblem(label, "not UTF-8, and no other text encoding fits it; convert it to UTF-8")
    # among candidates that fit equally well, the most widespread legacy encoding (Windows' Western European)
    tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    best = next((m for m in tied if m.encoding == _MOST_COMMON), best)
    return _clean(str(best)), best.encoding


def refuse_binary(data: bytes, label: str) -> None:
    """A FileProblem when ``data`` looks binary: a NUL byte, or many control characters, in its first 64 KiB."""
    head = data[:65536]
    controls = sum(1 for b in head if b < 32 and b not in _TEXT_CONTROLS)
    if b"\x00" in head or controls > _CONTROL_SHARE * len(head):
        raise FileProblem(label, "binary content, not text (is the suffix wrong?)")


def _decoded(data: bytes, encoding: str, label: str) -> str:
    try:
        return _clean(data.decode(encoding))
    except UnicodeDecodeError as err:
        raise FileProblem(
            label, f"starts with a {encoding} byte-order mark but is not {encoding}: {err.reason}"
        ) from None


def _clean(text: str) -> str:
    """Line ends as ``\\n``; NUL and other C0 controls but tab, newline and form feed dropped (SQLite and tokenizers
    take them badly)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch >= " " or ch in "\t\n\f")


def extract_text(data: bytes, label: str) -> Extracted:
    text, encoding = decode_text(data, label)
    return checked(Extracted(text=text, metadata=_encoding_metadata(encoding)), label)


def extract_markdown(data: bytes, label: str) -> Extracted:
    text, encoding = decode_text(data, label)
    body_start, front_title = _front_matter(text)
    headings = markdown_headings(text, body_start)
    title = front_title or first_title(headings)
    extracted = Extracted(
        text=text, title=title, metadata=_encoding_metadata(encoding), sections=close_sections(headings, len(text))
    )
    return checked(extracted, label)


def markdown_headings(text: str, start: int = 0) -> list[tuple[int, str, int]]:
    """``(level, title, offset)`` of each Markdown heading in ``text[start:]`` (ATX or setext), as markdown-it-py
    parses them; offsets count from the start of ``text``."""
    from markdown_it import MarkdownIt

    body = text[start:]
    line_starts = [0]
    line_starts.extend(i + 1 for i, ch in enumerate(body) if ch == "\n")
    tokens = MarkdownIt("commonmark").parse(body)
    headings = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map is not None and i + 1 < len(tokens):
            title = " ".join(tokens[i + 1].content.split())
            if title:
                headings.append((int(token.tag[1:]), title, start + line_starts[token.map[0]]))
    return headings


def first_title(headings: list[tuple[int, str, int]]) -> str | None:
    """The first level-1 heading's title, else the first heading's, else None."""
    return next((t for level, t, _ in headings if level == 1), None) or (headings[0][1] if headings else None)


def _front_matter(text: str) -> tuple[int, str | None]:
    """Where the Markdown body starts after a YAML front-matter block (``---`` ... ``---``), and its ``title``. Only
    that one key is read, by a line match rather than a YAML parser (no dependency for one scalar): a ``title:``
    line, its value unquoted; a block title (``title: >``) is not read."""
    if not text.startswith("---\n"):
        return 0, None
    end = text.find("\n---", 3)
    if end < 0:
        return 0, None
    body_start = text.find("\n", end + 4)
    body_start = len(text) if body_start < 0 else body_start + 1
    found = _TITLE_LINE.search(text[4:end])
    title = found.group(1).strip().strip("'\"").strip() if found else ""
    return body_start, " ".join(title.split()) if title and title not in (">", "|") else None


def _encoding_metadata(encoding: str) -> dict[str, str]:
    """The encoding is noted only when it is not UTF-8 (a detected one is a guess worth showing)."""
    return {} if encoding in ("utf-8", "ascii") else {"encoding": encoding}


def checked(extracted: Extracted, label: str) -> Extracted:
    if not extracted.text.strip():
        raise FileProblem(label, "no text in the file")
    return extracted
