"""Read and write the TREC text formats (qrels, runs) and `qid<TAB>text` query files, as trec_eval reads them.

Data model (as BEIR and pytrec_eval): qrels `{qid: {docid: label}}`, run `{qid: {docid: score}}`,
queries `{qid: text}`. Every reader accepts gzip files (name ending in `.gz`); errors name file and line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from twostage.eval.errors import EvalInputError
from twostage.eval.textio import iter_lines, open_text, os_reason

#: what a trec_eval label is: ASCII digits (Python's int() would also take '1_0' and '２')
_ASCII_INT = re.compile(r"[+-]?[0-9]+")

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
Queries = dict[str, str]
OnDuplicate = Literal["error", "first", "max"]


def _records(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, whitespace-split fields) for each line that is not blank or a `#` comment."""
    for number, line in iter_lines(path):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield number, fields


def read_qrels(path: str | Path) -> Qrels:
    """Read TREC qrels `qid iter docno label` (integer label; a repeated pair must repeat its label)."""
    qrels: Qrels = {}
    seen_on: dict[tuple[str, str], int] = {}
    for number, fields in _records(path):
        if len(fields) != 4:
            raise EvalInputError(f"expected 4 fields (qid 0 docid label), got {len(fields)}", path=path, line=number)
        qid, _, docid, text = fields
        if not _ASCII_INT.fullmatch(text):
            raise EvalInputError(
                f"expected an integer relevance label, got {text!r}", path=path, line=number, field="4 (label)"
            )
        label = int(text)
        judged = qrels.setdefault(qid, {})
        if docid in judged and judged[docid] != label:
            raise EvalInputError(
                f"document {docid} of query {qid} is judged {label} here but {judged[docid]} "
                f"on line {seen_on[qid, docid]}",
                path=path,
                line=number,
            )
        judged[docid] = label
        seen_on.setdefault((qid, docid), number)
    return qrels


def read_run_with_tag(path: str | Path, *, on_duplicate: OnDuplicate = "error") -> tuple[Run, str | None]:
    """Read a TREC run `qid Q0 docid rank score tag`; return it and the tag of its first line (None if empty).

    The rank field is ignored (trec_eval re-ranks by score). `on_duplicate` decides what a repeated
    (qid, docid) does: "error" (default, as trec_eval refuses it), "first" keeps the first, "max" the best score.
    """
    if on_duplicate not in ("error", "first", "max"):
        raise ValueError(f"on_duplicate must be 'error', 'first' or 'max', not {on_duplicate!r}")
    run: Run = {}
    seen_on: dict[tuple[str, str], int] = {}
    tag: str | None = None
    for number, fields in _records(path):
        if len(fields) != 6:
            raise EvalInputError(
                f"expected 6 fields (qid Q0 docid rank score tag), got {len(fields)}", path=path, line=number
            )
        qid, _, docid, _, text, line_tag = fields
        try:
            if not text.isascii() or "_" in text:  # Python's float() also takes '1_0' and full-width digits
                raise ValueError(text)
            score = float(text)
        except ValueError:
            raise EvalInputError(
                f"expected a numeric score, got {text!r}", path=path, line=number, field="5 (score)"
            ) from None
        if math.isnan(score):
            raise EvalInputError("score is NaN", path=path, line=number, field="5 (score)")
        if tag is None:
            tag = line_tag
        scores = run.setdefault(qid, {})
        if docid in scores:
            if on_duplicate == "error":
                raise EvalInputError(
                    f"duplicate document {docid} for query {qid} (first on line {seen_on[qid, docid]})",
                    path=path,
                    line=number,
                )
            if on_duplicate == "max":
                scores[docid] = max(scores[docid], score)
            continue
        scores[docid] = score
        seen_on[qid, docid] = number
    return run, tag


def read_run(path: str | Path, *, on_duplicate: OnDuplicate = "error") -> Run:
    """Read a TREC run file into `{qid: {docid: score}}`; see `read_run_with_tag`."""
    return read_run_with_tag(path, on_duplicate=on_duplicate)[0]


def ranked(scores: dict[str, float]) -> list[tuple[str, float]]:
    """(docid, score) pairs in trec_eval's order: score descending, ties broken by docid descending."""
    return sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)


def _check_token(value: str, what: str, qid: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise EvalInputError(
            f"{what} {value!r} (query {qid!r}) is empty or contains whitespace; TREC run files cannot hold it"
        )


def write_run(run: Run, path: str | Path, tag: str = "twostage", depth: int | None = None) -> None:
    """Write `run` as a TREC run, each query in trec_eval order with 1-based ranks, keeping its top `depth`.

    Queries appear in the run's own order; scores are written with `repr`, so reading back is exact. Every id is
    checked before the file is opened (an id a run file cannot hold leaves no file behind); a file that cannot be
    written is an EvalInputError naming it."""
    _check_token(tag, "run tag", "-")
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be a positive integer or None, not {depth!r}")
    for qid, scores in run.items():
        _check_token(str(qid), "query id", str(qid))
        for docid in scores:
            _check_token(str(docid), "document id", str(qid))
    try:
        with open_text(path, "w") as handle:
            for qid, scores in run.items():
                for rank, (docid, score) in enumerate(ranked(scores)[:depth], start=1):
                    handle.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")
    except OSError as err:
        raise EvalInputError(f"cannot write the run file: {os_reason(err)}", path=path) from None


def read_queries_tsv(path: str | Path) -> Queries:
    """Read `qid<TAB>text` lines (text may itself hold tabs); a repeated qid must repeat its text."""
    queries: Queries = {}
    for number, line in iter_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        qid, tab, text = line.partition("\t")
        qid = qid.strip()
        if not tab or not qid:
            raise EvalInputError("expected 'qid<TAB>query text'", path=path, line=number)
        if qid in queries and queries[qid] != text:
            raise EvalInputError(f"query {qid} appears twice with different text", path=path, line=number)
        queries[qid] = text
    return queries
