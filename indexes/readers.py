"""Corpus readers: JSONL/JSON, TSV, CSV (optionally gzipped), Parquet and Hugging Face datasets, streamed as Documents.

Every bad input raises :class:`CorpusError` naming the file, the 1-based line (for Parquet and Hugging Face datasets
the 1-based data row; for a JSON array the item) and the field at fault.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .documents import Document
from .errors import CorpusError
from .limits import deep_field
from .reader_records import (
    ID_FIELDS,
    TEXT_FIELDS,
    FieldSpec,
    RecordBuilder,
    finish,
    kind,
    looks_like_header,
    resolve_fields,
    too_deep,
)

#: suffixes read as files (each may end in .gz except .parquet)
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".csv": "csv", ".parquet": "parquet"}
#: names a BEIR-style corpus directory may hold
DIRECTORY_CORPORA = ("corpus.jsonl", "corpus.jsonl.gz", "corpus.tsv", "corpus.tsv.gz", "corpus.parquet")


# ---------------------------------------------------------------------------- public API
def read_corpus(
    source: str | Path,
    *,
    id_field: str | None = None,
    text_field: str | None = None,
    title_field: str | None = None,
    metadata_fields: list[str] | None = None,
    split: str = "train",
    config: str | None = None,
) -> Iterator[Document]:
    """Stream the documents of a corpus file, a BEIR-style directory, or (when no such path exists) a HF dataset.

    Fields are guessed when not given (id: id/_id/doc_id/docid/pid/passage_id, text: text/contents/content/passage/
    body/document, title: title); the remaining fields become metadata unless ``metadata_fields`` names them.
    The path, format and (for a dataset) the download are checked at once; each record as it is read.
    """
    spec = FieldSpec(id_field, text_field, title_field, list(metadata_fields) if metadata_fields is not None else None)
    path = _resolve_path(source)
    if path is None:
        return _read_hf(str(source), spec, split, config)
    fmt, compressed = _format_of(path)
    label = str(source) if Path(source) == path else str(path)
    if fmt == "parquet":
        return _read_parquet(path, label, spec)
    return _read_text(path, label, fmt, compressed, spec)


def validate_corpus(source: str | Path, **fields: Any) -> int:
    """Read a whole corpus once, checking every record as :func:`read_corpus` does, and return its size: a streaming
    pre-pass, cheap next to encoding, so that bad input anywhere is found before the first document is committed."""
    count = 0
    for _ in read_corpus(source, **fields):
        count += 1
    return count


def count_corpus(source: str | Path) -> int | None:
    """A cheap document count for a progress bar (exact for Parquet, line-based for text), or None if unknown."""
    try:
        path = _resolve_path(source)
        if path is None:
            return None
        fmt, compressed = _format_of(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if compressed:
            return None
        with path.open("rb") as fh:
            first = fh.readline()
            if fmt == "jsonl" and first.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                return None  # one JSON array: counting would mean parsing it
            lines, tail = first.count(b"\n"), first[-1:]
            for block in iter(lambda: fh.read(1 << 20), b""):
                lines += block.count(b"\n")
                tail = block[-1:]
            lines += 1 if tail and tail != b"\n" else 0  # a last line without a newline
        if fmt in ("tsv", "csv") and first:
            cells = (
                first.decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r\n").split("\t" if fmt == "tsv" else ",")
            )
            lines -= 1 if looks_like_header(cells, FieldSpec()) else 0
        return lines
    except Exception:  # only a progress-bar hint: any trouble means 'unknown'
        return None


# ---------------------------------------------------------------------------- sources
def _resolve_path(source: str | Path) -> Path | None:
    """The file to read, or None when ``source`` names no existing path and no known file suffix (a dataset name)."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in DIRECTORY_CORPORA:
            if (path / name).is_file():
                return path / name
        raise CorpusError(f"is a directory without any of {', '.join(DIRECTORY_CORPORA)}", path=str(source))
    if path.exists():
        return path
    if _suffix_format(path) is not None:
        raise CorpusError("no such file", path=str(source))
    return None


def _suffix_format(path: Path) -> tuple[str, bool] | None:
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in FORMATS:
        fmt = FORMATS[suffixes[-1]]
        if not (compressed and fmt == "parquet"):
            return fmt, compressed
    return None


def _format_of(path: Path) -> tuple[str, bool]:
    found = _suffix_format(path)
    if found is None:
        raise CorpusError(
            "unsupported corpus format: expected .jsonl, .json, .tsv, .csv (each optionally .gz) or .parquet",
            path=str(path),
        )
    return found


# ---------------------------------------------------------------------------- text formats
def _open_lines(path: Path, compressed: bool) -> Any:
    return gzip.open(path, "rb") if compressed else path.open("rb")


def _decoded(raw_lines: Iterable[bytes], label: str, bad: dict[int, UnicodeDecodeError]) -> Iterator[tuple[int, str]]:
    """(line number, text) pairs; undecodable bytes become surrogates and the line is noted in ``bad``."""
    lineno = 0
    try:
        for lineno, raw in enumerate(raw_lines, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad[lineno] = err
                text = raw.decode("utf-8", "surrogateescape")
            if lineno == 1:
                text = text.lstrip("\ufeff")
            yield lineno, text
    except (OSError, EOFError, zlib.error) as err:  # truncated or corrupt gzip
        raise CorpusError(f"cannot read the file: {err}", path=label, line=lineno + 1) from None


def _utf8_error(label: str, line: int, err: UnicodeDecodeError, field: str | None) -> CorpusError:
    byte = err.object[err.start : err.start + 1].hex()
    return CorpusError(
        f"not valid UTF-8 (byte 0x{byte} at byte {err.start + 1} of the line)", path=label, line=line, field=field
    )


def _has_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False


def _read_text(path: Path, label: str, fmt: str, compressed: bool, spec: FieldSpec) -> Iterator[Document]:
    if fmt == "jsonl":
        try:
            with _open_lines(path, compressed) as fh:
                start = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        except (OSError, EOFError, zlib.error) as err:
            raise CorpusError(f"cannot read the file: {err}", path=label, line=1) from None
        if start.startswith(b"["):
            return _read_json_array(path, label, compressed, spec)
        return _read_jsonl(path, label, compressed, spec)
    return _read_delimited(path, label, compressed, spec, delimiter="\t" if fmt == "tsv" else ",")


def _read_jsonl(path: Path, label: str, compressed: bool, spec: FieldSpec) -> Iterator[Document]:
    builder: RecordBuilder | None = None
    count = 0
    bad: dict[int, UnicodeDecodeError] = {}
    with _open_lines(path, compressed) as fh:
        for lineno, line in _decoded(fh, label, bad):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except RecursionError:
                raise too_deep(label, lineno, deep_field(line)) from None
            except json.JSONDecodeError as err:
                if lineno in bad:
                    raise _utf8_error(label, lineno, bad[lineno], None) from None
                raise CorpusError(f"malformed JSON: {err.msg} (column {err.colno})", path=label, line=lineno) from None
            if not isinstance(record, dict):
                raise CorpusError(f"expected a JSON object, got {kind(record)}", path=label, line=lineno)
            if lineno in bad:
                field = next((k for k, v in record.items() if _has_surrogates(k) or _has_surrogates(v)), None)
                raise _utf8_error(label, lineno, bad[lineno], field)
            if builder is None:
                builder = RecordBuilder(label, resolve_fields(list(record), spec, label, lineno))
            yield builder(record, lineno)
            count += 1
    finish(count, label)


def _read_json_array(path: Path, label: str, compressed: bool, spec: FieldSpec) -> Iterator[Document]:
    """A ``.json`` file holding one array of objects (loaded whole; JSON lines stream). Items count as lines."""
    with _open_lines(path, compressed) as fh:
        raw = fh.read()
    try:
        records = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
    except RecursionError:
        raise too_deep(label, None, None) from None
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise CorpusError(
            f"not valid UTF-8 (byte 0x{raw[err.start : err.start + 1].hex()})", path=label, line=line
        ) from None
    except json.JSONDecodeError as err:
        raise CorpusError(f"malformed JSON: {err.msg} (column {err.colno})", path=label, line=err.lineno) from None
    builder: RecordBuilder | None = None
    for item, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise CorpusError(f"expected a JSON object, got {kind(record)}", path=label, line=item)
        if builder is None:
            builder = RecordBuilder(label, resolve_fields(list(record), spec, label, item))
        yield builder(record, item)
    finish(len(records), label)


def _read_delimited(path: Path, label: str, compressed: bool, spec: FieldSpec, delimiter: str) -> Iterator[Document]:
    """TSV (no quoting, MS MARCO style; a header is detected by known field names) or CSV (RFC 4180 quoting and a
    header line naming the fields)."""
    bad: dict[int, UnicodeDecodeError] = {}
    count = 0
    with _open_lines(path, compressed) as fh:
        lines = _decoded(fh, label, bad)
        rows = _tsv_rows(lines) if delimiter == "\t" else _csv_rows(lines, label)
        columns: list[str] | None = None
        builder: RecordBuilder | None = None
        for first_line, last_line, row in rows:
            if not any(cell.strip() for cell in row):
                continue
            if builder is None:
                columns, has_header = _columns(row, spec, label, first_line, delimiter)
                builder = RecordBuilder(label, resolve_fields(columns, spec, label, first_line))
                if has_header:
                    _check_bad_utf8(bad, first_line, last_line, row, columns, label)
                    continue
            assert columns is not None
            _check_bad_utf8(bad, first_line, last_line, row, columns, label)
            if len(row) != len(columns):
                raise CorpusError(
                    f"expected {len(columns)} {'tab' if delimiter == chr(9) else 'comma'}-separated columns "
                    f"({', '.join(columns)}), found {len(row)}",
                    path=label,
                    line=first_line,
                )
            yield builder(dict(zip(columns, row)), first_line)
            count += 1
    finish(count, label)


def _columns(row: list[str], spec: FieldSpec, label: str, line: int, delimiter: str) -> tuple[list[str], bool]:
    """Column names from a header row, or the MS MARCO layout (id, text / id, title, text) for a headerless file."""
    if looks_like_header(row, spec):
        return [cell.strip() for cell in row], True
    given = [n for n in (spec.id, spec.text, spec.title) if n]
    if given:
        raise CorpusError(
            f"field {given[0]!r} not found: the first line is not a header (it names none of the known fields)",
            path=label,
            line=line,
            field=given[0],
        )
    if delimiter == ",":  # headerless files are MS MARCO's TSV layout; a CSV's first line names its columns
        raise CorpusError(
            f"the first line ({', '.join(cell.strip() for cell in row)[:80]}) is not a header: it names no id field "
            f"({', '.join(ID_FIELDS)}) or text field ({', '.join(TEXT_FIELDS)}); name them with --id-field and "
            f"--text-field",
            path=label,
            line=line,
        )
    sep = "tab"
    if len(row) == 2:
        return ["id", "text"], False
    if len(row) == 3:
        return ["id", "title", "text"], False
    raise CorpusError(
        f"no header line, and {len(row)} {sep}-separated columns: expected a header naming the fields, "
        f"or the columns id, text or id, title, text",
        path=label,
        line=line,
    )


def _tsv_rows(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, int, list[str]]]:
    for lineno, line in lines:
        yield lineno, lineno, line.rstrip("\r\n").split("\t")


def _csv_rows(lines: Iterable[tuple[int, str]], label: str) -> Iterator[tuple[int, int, list[str]]]:
    """CSV records with the file lines they span (a quoted field may hold newlines)."""
    csv.field_size_limit(2**31 - 1)
    numbered = iter(lines)
    current = [0]

    def texts() -> Iterator[str]:
        for lineno, line in numbered:
            current[0] = lineno
            yield line

    reader = csv.reader(texts(), strict=True)  # an unterminated or stray quote is an error, not a merged field
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise CorpusError(f"malformed CSV: {err}", path=label, line=current[0]) from None
        yield last + 1, current[0], row
        last = current[0]


def _check_bad_utf8(
    bad: dict[int, UnicodeDecodeError], first: int, last: int, row: list[str], columns: list[str], label: str
) -> None:
    for lineno in range(first, last + 1):
        if lineno in bad:
            field = next((name for name, cell in zip(columns, row) if _has_surrogates(cell)), None)
            raise _utf8_error(label, lineno, bad[lineno], field)


# ---------------------------------------------------------------------------- columnar sources
def _read_parquet(path: Path, label: str, spec: FieldSpec) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # the parquet extra (indexes imports nothing above it, so not runtime.optional's require)
        raise CorpusError(
            'reading Parquet needs pyarrow, which is not installed: pip install "twostage[parquet]"', path=label
        ) from None

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError family
        raise CorpusError(f"cannot read Parquet: {_one_line(err)}", path=label) from None
    return _read_rows(_parquet_rows(parquet, label), parquet.schema_arrow.names, label, spec)


def _parquet_rows(parquet: Any, label: str) -> Iterator[dict[str, Any]]:
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except Exception as err:
        raise CorpusError(f"cannot read Parquet: {_one_line(err)}", path=label) from None


def _read_hf(name: str, spec: FieldSpec, split: str, config: str | None) -> Iterator[Document]:
    """A Hugging Face dataset by name; failure to load is one CorpusError line, not the library's traceback."""
    try:
        import datasets
    except ImportError:  # the hf extra
        raise CorpusError(
            "no such file or directory (to read it as a Hugging Face dataset name instead, install datasets: "
            'pip install "twostage[hf]")',
            path=name,
        ) from None
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as err:
        raise CorpusError(
            f"no such file or directory, and it could not be loaded as a Hugging Face dataset "
            f"(split {split!r}): {_one_line(err)}",
            path=name,
        ) from None
    return _read_rows(iter(dataset), list(dataset.column_names), name, spec)


def _read_rows(rows: Iterator[dict[str, Any]], columns: list[str], label: str, spec: FieldSpec) -> Iterator[Document]:
    """Rows of a columnar source; errors name the 1-based data row as the line."""
    builder = RecordBuilder(label, resolve_fields(columns, spec, label, None))
    count = 0
    for count, row in enumerate(rows, start=1):
        yield builder(row, count)
    finish(count, label)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"
