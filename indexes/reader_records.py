"""One corpus record (a dict: a JSON line, a CSV row with its header, a Parquet or dataset row) into a checked
Document: the id, text and title fields found (or named), types and limits checked, the rest kept as metadata, an id
seen twice refused; every problem a CorpusError naming the file, line and field."""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .documents import Document, id_problem, unicode_problem
from .errors import CorpusError
from .limits import MAX_ID_CHARS, MAX_METADATA_CHARS, MAX_NESTING, MAX_TEXT_CHARS, MAX_TITLE_CHARS, nesting

ID_FIELDS = ("id", "_id", "doc_id", "docid", "pid", "passage_id")
TEXT_FIELDS = ("text", "contents", "content", "passage", "body", "document")
TITLE_FIELDS = ("title",)


# ---------------------------------------------------------------------------- fields
@dataclass
class FieldSpec:
    id: str | None = None
    text: str | None = None
    title: str | None = None
    metadata: list[str] | None = None


@dataclass
class Fields:
    id: str
    text: str
    title: str | None
    metadata: list[str] | None


def _find(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The first candidate present among ``keys``: exact spelling first, then ignoring case."""
    for name in candidates:
        if name in keys:
            return name
    folded = {k.casefold(): k for k in keys if isinstance(k, str)}
    for name in candidates:
        if name.casefold() in folded:
            return folded[name.casefold()]
    return None


def looks_like_header(row: Sequence[str], spec: FieldSpec) -> bool:
    known = {n.casefold() for n in (*ID_FIELDS, *TEXT_FIELDS, *TITLE_FIELDS)}
    known |= {n.casefold() for n in (spec.id, spec.text, spec.title) if n}
    return any(cell.strip().casefold() in known for cell in row)


def resolve_fields(keys: Sequence[str], spec: FieldSpec, label: str, line: int | None) -> Fields:
    """Pick the id/text/title fields from the first record's keys (or the header), or say what is missing."""
    shown = ", ".join(map(str, keys)) or "none"

    def pick(given: str | None, candidates: Sequence[str], role: str, required: bool) -> str | None:
        if given is not None:
            found = _find(keys, [given])
            if found is None and required:
                raise CorpusError(
                    f"{role} field {given!r} not found (fields: {shown})", path=label, line=line, field=given
                )
            return found
        found = _find(keys, candidates)
        if found is None and required:
            raise CorpusError(
                f"no {role} field: looked for {', '.join(candidates)} (fields: {shown}); name it with {role}_field",
                path=label,
                line=line,
            )
        return found

    id_name = pick(spec.id, ID_FIELDS, "id", True)
    text_name = pick(spec.text, TEXT_FIELDS, "text", True)
    # a "title" the first record lacks is still the title in the records that have one (not metadata)
    title_name = pick(spec.title, TITLE_FIELDS, "title", spec.title is not None) or TITLE_FIELDS[0]
    return Fields(id_name, text_name, title_name, spec.metadata)  # type: ignore[arg-type]


class RecordBuilder:
    """Turns one record (a dict) into a Document, checking types and duplicate ids across the file."""

    def __init__(self, label: str, fields: Fields):
        self.label, self.fields = label, fields
        self.seen: dict[str, int] = {}

    def error(self, message: str, line: int | None, field: str | None = None) -> CorpusError:
        return CorpusError(message, path=self.label, line=line, field=field)

    def __call__(self, record: dict[str, Any], line: int) -> Document:
        f = self.fields
        doc_id = self._id(record, line)
        text = record.get(f.text)
        if f.text not in record or text is None:
            raise self.error("missing text", line, f.text)
        if not isinstance(text, str):
            raise self.error(f"text must be a string, got {kind(text)}", line, f.text)
        if not text.strip():
            raise self.error("empty text", line, f.text)
        title = record.get(f.title) if f.title else None
        if title is not None and not isinstance(title, str):
            raise self.error(f"title must be a string, got {kind(title)}", line, f.title)
        for name, value, limit in ((f.text, text, MAX_TEXT_CHARS), (f.title, title, MAX_TITLE_CHARS)):
            if value is not None and len(value) > limit:
                raise self.error(f"{len(value):,} characters, more than the limit of {limit:,}", line, name)
            if (problem := unicode_problem(value)) is not None:
                raise self.error(problem, line, name)
        metadata = self._metadata(record, line)
        for key, value in metadata.items():
            if (problem := unicode_problem(key) or unicode_problem(value)) is not None:
                raise self.error(problem, line, key)
        previous = self.seen.get(doc_id)
        if previous is not None:
            raise self.error(f"duplicate id {doc_id!r} (first seen on line {previous})", line, f.id)
        self.seen[doc_id] = line
        return Document(id=doc_id, text=text, title=title if title and title.strip() else None, metadata=metadata)

    def _id(self, record: dict[str, Any], line: int) -> str:
        name = self.fields.id
        value = record.get(name)
        if value is None:
            raise self.error("missing id", line, name)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(f"id must be a string or an integer, got {kind(value)}", line, name)
        value = str(value)
        if len(value) > MAX_ID_CHARS:
            raise self.error(f"{len(value):,} characters, more than the limit of {MAX_ID_CHARS:,}", line, name)
        if (problem := id_problem(value)) is not None:
            raise self.error(problem, line, name)
        return value

    def _metadata(self, record: dict[str, Any], line: int) -> dict[str, Any]:
        f = self.fields
        if f.metadata is not None:
            items = [(k, record[k]) for k in f.metadata if k in record]
        else:
            skip = {f.id, f.text, f.title}
            items = []
            for key, value in record.items():
                if key in skip:
                    continue
                if key == "metadata" and isinstance(value, dict):  # {"metadata": {...}} is flattened
                    items.extend(value.items())
                else:
                    items.append((key, value))
        metadata = {}
        for key, value in items:
            if nesting(value) > MAX_NESTING:
                raise self.error(f"nests deeper than the limit of {MAX_NESTING} levels", line, str(key))
            kept = _metadata_value(value)
            if len(kept if isinstance(kept, str) else json.dumps(kept, default=str)) > MAX_METADATA_CHARS:
                raise self.error(f"longer than the limit of {MAX_METADATA_CHARS:,} characters as JSON", line, str(key))
            if kept is not _DROP:
                metadata[str(key)] = kept
        return metadata


_DROP = object()


def _metadata_value(value: Any) -> Any:
    """Scalars as they are; dates as ISO strings; lists/dicts if JSON-serialisable; anything else is dropped."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            return _DROP
    return _DROP


def too_deep(label: str, line: int | None, field: str | None) -> CorpusError:
    return CorpusError(
        f"JSON nested too deeply to read (metadata may nest {MAX_NESTING} levels)", path=label, line=line, field=field
    )


def kind(value: Any) -> str:
    return {list: "a list", dict: "an object", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def finish(count: int, label: str) -> None:
    if count == 0:
        raise CorpusError("no documents found: the corpus is empty", path=label)
