"""Read the BEIR file formats: `queries.jsonl` and `qrels/<split>.tsv` (header `query-id corpus-id score`)."""

from __future__ import annotations

from pathlib import Path

from twostage.eval.errors import EvalInputError
from twostage.eval.textio import iter_json_lines, iter_lines
from twostage.eval.trec import Qrels, Queries


def read_beir_queries(path: str | Path) -> Queries:
    """Read BEIR `queries.jsonl` (`{"_id", "text"}` a line) into `{qid: text}`."""
    queries: Queries = {}
    for number, record in iter_json_lines(path):
        if not isinstance(record, dict) or record.get("_id", record.get("id")) is None:
            raise EvalInputError("expected an object with '_id' and 'text'", path=path, line=number, field="_id")
        text = record.get("text")
        if not isinstance(text, str):
            raise EvalInputError("query has no string 'text'", path=path, line=number, field="text")
        queries[str(record.get("_id", record.get("id")))] = text
    return queries


def read_beir_qrels(path: str | Path) -> Qrels:
    """Read BEIR qrels `query-id<TAB>corpus-id<TAB>score` (header line skipped; integer scores)."""
    qrels: Qrels = {}
    for number, line in iter_lines(path):
        fields = [field.strip() for field in line.rstrip("\r\n").split("\t")] if line.strip() else []
        if not fields or (number == 1 and fields[0] == "query-id"):
            continue
        if len(fields) != 3:
            raise EvalInputError(
                f"expected 3 fields (query-id corpus-id score), got {len(fields)}", path=path, line=number
            )
        qid, docid, text = fields
        try:
            label = int(text)
        except ValueError:
            raise EvalInputError(
                f"expected an integer score, got {text!r}", path=path, line=number, field="3 (score)"
            ) from None
        judged = qrels.setdefault(qid, {})
        if docid in judged and judged[docid] != label:
            raise EvalInputError(
                f"document {docid} of query {qid} is judged twice with different scores", path=path, line=number
            )
        judged[docid] = label
    return qrels
