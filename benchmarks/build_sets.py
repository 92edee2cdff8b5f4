"""Build more evaluation sets, offline, in the shared folder format (corpus.jsonl, queries.tsv, qrels.txt): the
classic small test collections Cranfield (aeronautics, 1,400 abstracts, 225 queries) and CISI (library science,
1,460 abstracts, 76 judged queries), from their SMART-format files.

    python benchmarks/build_sets.py --source RAW_DIR [--out ~/.cache/twostage/sets]

RAW_DIR holds the original files (found anywhere below it): cran.all.1400, cran.qry, cranqrel; CISI.ALL, CISI.QRY,
CISI.REL. They are the files the University of Glasgow IR group distributes (ir.dcs.gla.ac.uk/resources/
test_collections/), also copied in public repositories (PROVENANCE below); each is checked by SHA-256 before use, so
a set built here is the set the benchmarks measured. The output goes outside the repository (these files are never
committed); each set's folder gets a README.md with its provenance, licence and label mapping. Exit status 2 with one
line naming the file when a file is missing, differs or cannot be parsed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = Path(os.environ.get("TWOSTAGE_SETS", Path.home() / ".cache" / "twostage" / "sets"))
LICENCE = (
    "Classic SMART/Glasgow test collection, distributed freely for research use by the University of Glasgow IR "
    "group (ir.dcs.gla.ac.uk/resources/test_collections); no formal licence is attached. Do not commit the files."
)


@dataclass(frozen=True)
class Source:
    """One original file: its name, SHA-256, and a public copy it was taken from (repository, commit, path)."""

    name: str
    sha256: str
    repository: str
    commit: str


CRANFIELD = (
    Source(
        "cran.all.1400",
        "fbb8935a93263ab6c9fadefb507fd7cd5e101e7fbeb31c12e6bff6dd501315e8",
        "noramtboraas/information-retrieval",
        "4ea1b8e02da1db64b68b0364d50620b3c95528dc",
    ),
    Source(
        "cran.qry",
        "99578ceb88941ef89c14faf7c63c23776a376d8fba319b990f01d0c601d8b03f",
        "noramtboraas/information-retrieval",
        "4ea1b8e02da1db64b68b0364d50620b3c95528dc",
    ),
    Source(
        "cranqrel",
        "a90f56082cd44db70bf2c21ebca39a1a34e37c82ccb5ddf1bcc64f18795234c7",
        "noramtboraas/information-retrieval",
        "4ea1b8e02da1db64b68b0364d50620b3c95528dc",
    ),
)
CISI = (
    Source(
        "CISI.ALL",
        "c13934ad921234b571e7b424af3461fe39dccb16757cb21954b3aea5250d072e",
        "s-posito/tdde16-project-estne450",
        "3efb6f5e94d9ceeb585570618b35c59c093b22a0",
    ),
    Source(
        "CISI.QRY",
        "e68d8b93491927db8d2d56a74c61eeaec8f71f66c120b1d7ae3581e9840db9d3",
        "s-posito/tdde16-project-estne450",
        "3efb6f5e94d9ceeb585570618b35c59c093b22a0",
    ),
    Source(
        "CISI.REL",
        "deb203a0dc07628d14dbcbc9a9803bf3c1f86e855570edb29d907663de8d6ea9",
        "s-posito/tdde16-project-estne450",
        "3efb6f5e94d9ceeb585570618b35c59c093b22a0",
    ),
)


class BuildError(Exception):
    """A missing, changed or unparsable source file (the message names it)."""


def smart_records(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The records of a SMART-format file: ``.I id`` starts one, ``.X`` (a field letter) starts a field."""
    record_id, fields, field = None, {}, None
    for line in path.read_text(encoding="utf-8", errors="strict").splitlines():
        match = re.match(r"^\.([A-Z])(?:\s+(\S+))?\s*$", line)
        if match and match.group(1) == "I":
            if record_id is not None:
                yield record_id, fields
            record_id, fields, field = match.group(2), {}, None
        elif match:
            field = match.group(1)
            fields.setdefault(field, "")
        elif field is not None:
            fields[field] += line + "\n"
    if record_id is not None:
        yield record_id, fields


def clean(text: str) -> str:
    """One line of text: whitespace collapsed, Cranfield's " ." sentence ends joined."""
    return re.sub(r"\s+([.,;:])", r"\1", " ".join(text.split()))


def cranfield(files: dict[str, Path]) -> tuple[list[dict], dict[str, str], list[tuple[str, str, int]]]:
    """Cranfield: title + abstract; queries renumbered 1..225 in file order (the qrels use those numbers, not the
    ``.I`` ids); Cleverdon's codes 1 (complete answer) .. 4 (minimum interest) become gains 4 .. 1, and -1 (no
    interest) becomes 0. The abstracts repeat their title, so the title is cut from the text's start; the two
    records with neither (471, 995) are left out, with the one judgement that names them."""
    corpus = []
    for doc_id, fields in smart_records(files["cran.all.1400"]):
        title, body = clean(fields.get("T", "")), clean(fields.get("W", ""))
        text = body[len(title) :].strip() if title and body.startswith(title) else body
        if text or title:
            corpus.append({"id": doc_id, "title": title, "text": text or title})
    kept = {d["id"] for d in corpus}
    queries = {str(i): clean(f.get("W", "")) for i, (_, f) in enumerate(smart_records(files["cran.qry"]), start=1)}
    qrels = []
    for n, line in enumerate(files["cranqrel"].read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if len(parts) != 3:
            raise BuildError(f"{files['cranqrel']}:{n}: expected 'query document code', got {line!r}")
        qid, doc_id, code = parts
        if doc_id in kept:
            qrels.append((qid, doc_id, 5 - int(code) if 1 <= int(code) <= 4 else 0))
    return corpus, queries, qrels


def cisi(files: dict[str, Path]) -> tuple[list[dict], dict[str, str], list[tuple[str, str, int]]]:
    """CISI: title + abstract (authors and citation lists dropped); binary judgements (label 1)."""
    corpus = [
        {"id": doc_id, "title": clean(f.get("T", "")), "text": clean(f.get("W", "")) or clean(f.get("T", ""))}
        for doc_id, f in smart_records(files["CISI.ALL"])
    ]
    queries = {qid: clean(f.get("W", "") or f.get("T", "")) for qid, f in smart_records(files["CISI.QRY"])}
    qrels = []
    for n, line in enumerate(files["CISI.REL"].read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if len(parts) != 4:
            raise BuildError(f"{files['CISI.REL']}:{n}: expected 'query document 0 0.0', got {line!r}")
        qrels.append((parts[0], parts[1], 1))
    return corpus, queries, qrels


SETS = {
    "cranfield": (
        CRANFIELD,
        cranfield,
        "Cranfield (aeronautics abstracts, 1960s). Graded labels: gain 4 = Cleverdon's code 1 (complete answer) .. "
        "gain 1 = code 4 (minimum interest); count label >= 1 as relevant.",
    ),
    "cisi": (
        CISI,
        cisi,
        "CISI (library and information science abstracts). Binary labels; only queries with judgements are kept.",
    ),
}


def find(source_dir: Path, source: Source) -> Path:
    """The source file below ``source_dir``, checked by SHA-256."""
    matches = sorted(p for p in source_dir.rglob(source.name) if p.is_file())
    if not matches:
        raise BuildError(f"{source.name}: not found under {source_dir} (from {source.repository} @ {source.commit})")
    for path in matches:
        if hashlib.sha256(path.read_bytes()).hexdigest() == source.sha256:
            return path
    raise BuildError(f"{matches[0]}: SHA-256 differs from the expected {source.sha256[:12]}... (another version)")


def write_set(name: str, out: Path, corpus: list[dict], queries: dict[str, str], qrels: list, sources, note: str):
    """The set's four files, written aside and renamed into place (a failure leaves no half-written set)."""
    judged = {qid for qid, _, label in qrels if label > 0}
    doc_ids = {d["id"] for d in corpus}
    unknown = sorted({d for _, d, _ in qrels if d not in doc_ids})
    if unknown:
        raise BuildError(f"{name}: qrels name {len(unknown)} documents the corpus lacks (first {unknown[0]})")
    kept = {qid: text for qid, text in queries.items() if qid in judged and text}
    target = out / name
    tmp = out / f".{name}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc in corpus:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    (tmp / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in kept.items()), encoding="utf-8")
    (tmp / "qrels.txt").write_text("".join(f"{q} 0 {d} {label}\n" for q, d, label in qrels if q in kept))
    provenance = {
        "name": name,
        "documents": len(corpus),
        "queries": len(kept),
        "judgements": sum(1 for q, _, _ in qrels if q in kept),
        "sources": [s.__dict__ for s in sources],
        "licence": LICENCE,
        "note": note,
        "built_by": "benchmarks/build_sets.py",
    }
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1))
    (tmp / "README.md").write_text(
        f"# {name}\n\n{note}\n\n{len(corpus)} documents, {len(kept)} judged queries.\n\nSources (SHA-256 checked): "
        + "; ".join(f"{s.name} from github.com/{s.repository} @ {s.commit[:12]}" for s in sources)
        + f".\n\nLicence: {LICENCE}\n"
    )
    if target.exists():
        for old in target.iterdir():
            old.unlink()
        target.rmdir()
    tmp.rename(target)
    return provenance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="folder holding the original files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the sets go (default {DEFAULT_OUT})")
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    args = parser.parse_args(argv)
    try:
        for name in args.sets:
            sources, build, note = SETS[name]
            files = {s.name: find(args.source, s) for s in sources}
            corpus, queries, qrels = build(files)
            info = write_set(name, args.out, corpus, queries, qrels, sources, note)
            print(f"{args.out / name}: {info['documents']} documents, {info['queries']} queries")
    except (BuildError, UnicodeDecodeError, ValueError, OSError) as err:
        print(f"build_sets: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
