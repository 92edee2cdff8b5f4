"""Stream corpus documents as `{"id", "title", "text"}` dicts from JSONL or MS MARCO TSV files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from twostage.eval.errors import EvalInputError
from twostage.eval.textio import iter_json_lines, iter_lines


def iter_jsonl_corpus(path: str | Path) -> Iterator[dict[str, str]]:
    """Yield documents of a JSONL corpus, one object a line with `id` (or BEIR's `_id`), `text`, optional `title`."""
    for number, record in iter_json_lines(path):
        if not isinstance(record, dict):
            raise EvalInputError("expected a JSON object", path=path, line=number)
        docid = record.get("_id", record.get("id"))
        if docid is None or str(docid) == "":
            raise EvalInputError("document has no 'id' (or '_id')", path=path, line=number, field="id")
        text = record.get("text")
        if not isinstance(text, str):
            raise EvalInputError("document has no string 'text'", path=path, line=number, field="text")
        yield {"id": str(docid), "title": str(record.get("title") or ""), "text": text}


def iter_tsv_corpus(path: str | Path) -> Iterator[dict[str, str]]:
    """Yield documents of an MS MARCO style `collection.tsv` (`pid<TAB>text`, no title)."""
    for number, line in iter_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        docid, tab, text = line.partition("\t")
        if not tab or not docid.strip():
            raise EvalInputError("expected 'docid<TAB>text'", path=path, line=number)
        yield {"id": docid.strip(), "title": "", "text": text}
