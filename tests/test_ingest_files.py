"""Files and folders as corpora: extraction of real generated files, folder walking, sync counts, and every kind of bad
file refused in one line naming it (exit 2, nothing written) or skipped with ``--skip-bad``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from document_files import FACTS, write_docx, write_folder, write_html, write_large_text, write_markdown, write_pdf
from test_cli import twostage

from twostage.ingest import files as files_module
from twostage.ingest.files import FoundFile, Source
from twostage.ingest.formats import FORMATS
from twostage.ingest.sync import StoredFiles, default_selection, scan
from twostage.ingest.text_formats import decode_text

pytest.importorskip("pypdfium2")
pytest.importorskip("docx")
pytest.importorskip("trafilatura")
pytest.importorskip("fpdf")


def extract(path: Path):
    fmt = FORMATS[path.suffix]
    return fmt.extract(path.read_bytes(), str(path))


def squeeze(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------- extraction
def test_markdown_title_sections_and_offsets(tmp_path):
    title, fact = write_markdown(tmp_path / "handbook.md")
    got = extract(tmp_path / "handbook.md")
    assert got.title == title  # from the YAML front matter
    doc = got.to_document("handbook.md")
    at = doc.text.index(fact)
    assert doc.heading_path(at) == ["Coastal Stations Handbook", "Station notes 27", "Skellig Rock"]
    assert "not a heading" not in [s.title for s in doc.sections]  # '#' inside a code block
    assert all(doc.text[s.start :].startswith("#") for s in doc.sections)


def test_html_main_content_without_boilerplate(tmp_path):
    title, fact = write_html(tmp_path / "diary.html")
    got = extract(tmp_path / "diary.html")
    assert got.title == title
    assert fact in squeeze(got.text)
    for boilerplate in ("Menu entry", "newsletter", "Copyright", "tracking"):
        assert boilerplate not in got.text
    doc = got.to_document("diary.html")
    assert doc.heading_path(doc.text.index(fact[:40]))[-1].startswith("Growing notes")


def test_pdf_pages_and_metadata_title(tmp_path):
    title, fact = write_pdf(tmp_path / "staff.pdf", pages=5, fact_page=4)
    got = extract(tmp_path / "staff.pdf")
    assert got.title == title and got.metadata["pages"] == 5
    assert [p.number for p in got.pages] == [1, 2, 3, 4, 5]
    doc = got.to_document("staff.pdf")
    start = squeeze(doc.text).index(fact)
    # the fact's first word, found in the raw text (PDF lines may break inside the sentence)
    at = doc.text.index("Employees may carry")
    assert start >= 0 and doc.page_at(at) == 4
    page = got.pages[3]
    assert "Chapter 4" in doc.text[page.start : page.end]


def test_docx_paragraphs_tables_and_headings(tmp_path):
    title, fact = write_docx(tmp_path / "roads.docx")
    got = extract(tmp_path / "roads.docx")
    assert got.title == title and fact in got.text
    assert "E6\topen" in got.text  # the table, row by row
    doc = got.to_document("roads.docx")
    assert doc.heading_path(doc.text.index(fact)) == ["Northern Roads Maintenance Report", "Section 11"]


def test_large_text_and_encodings(tmp_path):
    _, fact = write_large_text(tmp_path / "big.txt", megabytes=1.0)
    got = extract(tmp_path / "big.txt")
    assert fact in got.text and got.pages == [] and got.sections == []
    text, encoding = decode_text("Crème brûlée à la carte, naïve café.\n".encode("cp1252") * 20, "x.txt")
    assert text.startswith("Crème brûlée") and encoding.replace("_", "").lower() in ("cp1252", "windows1252", "latin1")
    assert decode_text("ünïcode\r\n".encode("utf-16"), "y.txt") == ("ünïcode\n", "utf-16")


# ----------------------------------------------------------------------------------------------- walking
def _ids(root: Path, **selection) -> list[str]:
    result = scan([Source.of(str(root))], default_selection(**selection), StoredFiles(), max_size=1 << 30)
    with result.spool:
        assert not result.problems, result.problems
        return sorted(d.id for d in result.spool)


def test_walk_ids_globs_and_hidden_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in ("top.md", "a/one.txt", "a/b/two.txt", ".secret.txt", ".hidden/x.txt", "notes.log", "img.png"):
        (tmp_path / name).write_text(f"text of {name}\n", encoding="utf-8")
    assert _ids(tmp_path) == ["a/b/two.txt", "a/one.txt", "top.md"]
    assert _ids(tmp_path, hidden=True) == [".hidden/x.txt", ".secret.txt", "a/b/two.txt", "a/one.txt", "top.md"]
    assert _ids(tmp_path, include=["*.txt"]) == ["a/b/two.txt", "a/one.txt"]
    assert _ids(tmp_path, exclude=["b"]) == ["a/one.txt", "top.md"]
    assert _ids(tmp_path, exclude=["a/b/*"]) == ["a/one.txt", "top.md"]
    assert _ids(tmp_path, include=["*.log"]) == ["notes.log"]  # an --include'd unknown suffix is read as text
    # a quoted glob (the shell left it): its literal folder is the root, ids are paths under it
    assert _ids(tmp_path / "**" / "*.txt") == ["a/b/two.txt", "a/one.txt"]
    assert _ids(tmp_path / "a" / "*") == ["b/two.txt", "one.txt"]
    assert Source.of(str(tmp_path / "a" / "*.txt")) == Source(tmp_path / "a", "*.txt")


def test_file_metadata_is_complete(tmp_path):
    (tmp_path / "doc.md").write_text("# Title here\n\nBody text.\n", encoding="utf-8")
    result = scan([Source(tmp_path)], default_selection(), StoredFiles(), max_size=1 << 20)
    with result.spool:
        (doc,) = list(result.spool)
    meta = doc.metadata
    assert doc.id == "doc.md" and doc.title == "Title here"
    assert meta["type"] == "markdown" and meta["size"] == 25 and meta["path"] == str((tmp_path / "doc.md").absolute())
    assert (
        len(meta["sha256"]) == 64 and meta["root"] == str(tmp_path.absolute()) and meta["modified"].endswith("+00:00")
    )
    json.dumps(meta)


# ----------------------------------------------------------------------------------------------- bad input
def _folder_with(tmp_path: Path, name: str, content: bytes) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    (folder / "good.txt").write_text("A perfectly fine text file about rivers.\n", encoding="utf-8")
    (folder / name).write_bytes(content)
    return folder


def _encrypted_pdf() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="secret")
    pdf.add_page()
    pdf.set_font("Helvetica")
    pdf.cell(0, 10, "classified text")
    return bytes(pdf.output())


BAD_FILES = {
    "encrypted.pdf": (_encrypted_pdf, "encrypted PDF"),
    "corrupt.pdf": (lambda: b"%PDF-1.4\n1 0 obj garbage", "not a readable PDF"),
    "binary.txt": (lambda: bytes(range(256)) * 8, "binary content"),
    "empty.html": (
        lambda: b"<html><head><title>t</title><script>x()</script></head><body><div></div></body></html>",
        "no text",
    ),
    "empty.md": (lambda: b"", "empty file"),
    "broken.docx": (lambda: b"PK\x03\x04 not really a zip", "not a readable .docx"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_one_line_and_nothing_is_written(tmp_path, name):
    make, reason = BAD_FILES[name]
    folder = _folder_with(tmp_path, name, make())
    done = twostage("index", str(folder), "--index", str(tmp_path / "c"), "--quiet")
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and str(folder / name) in line and reason in line, line
    assert "nothing was written" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "c").exists()


def test_over_the_size_limit(tmp_path):
    folder = _folder_with(tmp_path, "big.txt", b"word " * 400)
    done = twostage("index", str(folder), "--index", str(tmp_path / "c"), "--max-file-size", "0.001")
    assert done.returncode == 2 and "big.txt: 2,000 bytes, over the limit of 1,048" in done.stderr, done.stderr


def test_symlink_loops(tmp_path):
    folder = _folder_with(tmp_path, "fine.md", b"# Fine\n\ntext\n")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "self.txt").symlink_to(folder / "self.txt")
    done = twostage("index", str(folder), "--index", str(tmp_path / "c"))
    assert done.returncode == 2, done.stderr
    assert f"{folder / 'loop'}: symlink loop" in done.stderr and f"{folder / 'self.txt'}: symlink loop" in done.stderr
    assert "2 files cannot be indexed; nothing was written" in done.stderr and not (tmp_path / "c").exists()


def test_a_file_that_vanishes_or_changes_while_read(tmp_path, monkeypatch):
    folder = _folder_with(tmp_path, "moving.txt", b"text that will not stay put\n")
    real_read = files_module.read_file

    def vanishing(found: FoundFile, max_size: int):
        if found.path.name == "moving.txt":
            found.path.unlink()
        return real_read(found, max_size)

    monkeypatch.setattr("twostage.ingest.sync.read_file", vanishing)
    done = twostage("index", str(folder), "--index", str(tmp_path / "c"))
    assert done.returncode == 2 and "moving.txt: vanished during the run" in done.stderr, done.stderr
    monkeypatch.undo()

    (folder / "moving.txt").write_bytes(b"text that will not stay put\n")
    real_open = open

    def appending_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        if Path(path).name == "moving.txt":
            with real_open(path, "ab") as writer:
                writer.write(b"more text written meanwhile\n")
        return handle

    monkeypatch.setattr(files_module, "open", appending_open, raising=False)
    done = twostage("index", str(folder), "--index", str(tmp_path / "c"))
    assert done.returncode == 2 and "moving.txt: changed while it was being read" in done.stderr, done.stderr
    assert not (tmp_path / "c").exists()


def test_permission_denied(tmp_path):
    """Root reads any file whatever its mode: as root, the CLI runs without the capabilities that let it
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped by util-linux's setpriv), so the file's mode 000 holds."""
    folder = _folder_with(tmp_path, "locked.txt", b"you may not read this\n")
    (folder / "locked.txt").chmod(0o000)
    command = [sys.executable, "-m", "twostage.cli", "index", str(folder), "--index", str(tmp_path / "c"), "-q"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without util-linux's setpriv to drop the capability to read any file")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    try:
        done = subprocess.run(
            command, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300
        )
    finally:
        (folder / "locked.txt").chmod(0o644)
    assert done.returncode == 2, done.stderr
    assert f"{folder / 'locked.txt'}: permission denied" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "c").exists()


def test_a_missing_extra_is_named(tmp_path, monkeypatch):
    folder = _folder_with(tmp_path, "a.pdf", b"%PDF-1.4")
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # as if twostage[documents] were not installed
    done = twostage("index", str(folder), "--index", str(tmp_path / "c"), "--quiet")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"twostage index: error: {folder / 'a.pdf'}: reading PDF files needs pypdfium2, which is not installed: "
        'pip install "twostage[documents]"'
    )


def test_mixed_inputs_and_missing_paths_are_refused(tmp_path):
    folder = _folder_with(tmp_path, "x.md", b"# X\n\nbody\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n', encoding="utf-8")
    done = twostage("index", str(folder), str(corpus), "--index", str(tmp_path / "c"))
    assert done.returncode == 2 and "either files and folders" in done.stderr
    done = twostage("index", str(tmp_path / "nope.pdf"), "--index", str(tmp_path / "c"))
    assert done.returncode == 2 and "nope.pdf: no such file" in done.stderr
    done = twostage("index", str(tmp_path / "nothing-*.md"), "--index", str(tmp_path / "c"))
    assert done.returncode == 2 and "nothing-*.md: matches no file or folder" in done.stderr
    done = twostage("add", str(tmp_path / "c"), str(folder))
    assert done.returncode == 2 and f"twostage index {folder} --index {tmp_path / 'c'} --add" in done.stderr


# ----------------------------------------------------------------------------------------------- indexing, sync
@pytest.fixture()
def tiny(tiny_bi_encoder_dir) -> list[str]:
    return ["--model", str(tiny_bi_encoder_dir), "--quiet"]


def test_skip_bad_indexes_the_rest_and_lists_the_skipped(tmp_path, tiny):
    folder = _folder_with(tmp_path, "binary.txt", bytes(range(256)) * 4)
    (folder / "empty.md").write_bytes(b"")
    done = twostage("index", str(folder), "--index", str(tmp_path / "c"), "--skip-bad", *tiny)
    assert done.returncode == 0, done.stderr
    assert "1 new, 0 changed, 0 unchanged, 0 removed (1 documents)" in done.stdout
    assert "skipped 2 file(s)" in done.stderr
    assert (
        f"{folder / 'binary.txt'}: binary content" in done.stderr
        and f"{folder / 'empty.md'}: empty file" in done.stderr
    )


def test_folder_sync_reencodes_only_changed_files(tmp_path, tiny):
    """The target: 100 files, 3 changed and 1 deleted: 3 re-encoded, 1 removed with --sync (listed without it)."""
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    names = [f"sub/note-{i:03d}.md" if i % 2 else f"note-{i:03d}.txt" for i in range(100)]
    for i, name in enumerate(names):
        (folder / name).write_text(f"# Note {i}\n\nNote number {i} is about topic {i % 7}.\n", encoding="utf-8")
    index = tmp_path / "c"
    done = twostage("index", str(folder), "--index", str(index), *tiny)
    assert done.returncode == 0, done.stderr
    assert "100 new, 0 changed, 0 unchanged, 0 removed (100 documents)" in done.stdout

    for name in names[10:13]:
        (folder / name).write_text("# Changed\n\nA rewritten note.\n", encoding="utf-8")
    os.utime(folder / names[20])  # touched, same content: unchanged
    (folder / names[50]).unlink()
    done = twostage("index", str(folder), "--index", str(index), *tiny)
    assert done.returncode == 0, done.stderr
    assert "0 new, 3 changed, 96 unchanged, 0 removed (100 documents)" in done.stdout
    assert f"1 file(s) gone since the last run, their documents kept (--sync removes them): {names[50]}" in done.stdout

    done = twostage("index", str(folder), "--index", str(index), "--sync", *tiny)
    assert done.returncode == 0, done.stderr
    assert "0 new, 0 changed, 99 unchanged, 1 removed (99 documents)" in done.stdout

    (folder / "new.md").write_text("# New\n\nA new note.\n", encoding="utf-8")
    done = twostage("index", str(folder), "--index", str(index), *tiny)
    assert "1 new, 0 changed, 99 unchanged, 0 removed (100 documents)" in done.stdout, done.stdout
    found = twostage("search", str(index), "rewritten note", "--no-rerank", "--filter", "type=markdown", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    assert hits and all(h["metadata"]["type"] == "markdown" for h in hits)


def test_index_into_a_collection_from_other_inputs_needs_add(tmp_path, tiny):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n{"id": "b", "text": "beta"}\n', encoding="utf-8")
    index = tmp_path / "c"
    assert twostage("index", str(corpus), "--index", str(index), *tiny).returncode == 0
    folder = _folder_with(tmp_path, "x.md", b"# X\n\nbody of x\n")
    done = twostage("index", str(folder), "--index", str(index), *tiny)
    assert done.returncode == 2 and "holds 2 document(s) that did not come from" in done.stderr, done.stderr
    assert "--add" in done.stderr
    done = twostage("index", str(folder), "--index", str(index), "--add", "--sync", *tiny)
    assert done.returncode == 0, done.stderr
    assert "2 new, 0 changed, 0 unchanged, 0 removed (4 documents)" in done.stdout  # --sync leaves others alone
    # and the other way round: a corpus into a collection that holds files
    files_only = tmp_path / "files-only"
    assert twostage("index", str(folder), "--index", str(files_only), *tiny).returncode == 0
    done = twostage("index", str(corpus), "--index", str(files_only), *tiny)
    assert done.returncode == 2 and "holds 2 document(s) indexed from files" in done.stderr, done.stderr
    assert "2 added" in twostage("index", str(corpus), "--index", str(files_only), "--add", *tiny).stdout
    done = twostage("index", str(corpus), "--index", str(tmp_path / "x"), "--sync")
    assert done.returncode == 2 and "--sync applies to files and folders" in done.stderr


def test_real_files_folder_is_indexed_with_metadata(tmp_path, tiny):
    made = write_folder(tmp_path / "docs")
    done = twostage("index", str(tmp_path / "docs"), "--index", str(tmp_path / "c"), *tiny)
    assert done.returncode == 0, done.stderr
    assert "5 new" in done.stdout
    from twostage.indexes.sharded import open_collection

    with open_collection(tmp_path / "c") as collection:
        docs = {d.id: d for d in collection.iter_documents()}
    assert sorted(docs) == sorted(name for name, _, _ in made.values())
    assert docs["staff.pdf"].metadata["pages"] == 5 and docs["staff.pdf"].title == "Staff Handbook 2026"
    assert {d.metadata["type"] for d in docs.values()} == {"markdown", "html", "pdf", "docx", "text"}
    for kind, (name, _, fact) in made.items():
        assert squeeze(fact) in squeeze(docs[name].text), kind
    assert FACTS  # the questions are used by the rank test of the splitting


def test_real_files_are_found_at_rank_one_with_their_passage(tmp_path, minilm_path):
    """The issue's target: a folder of real files with a known sentence deep inside each; a paraphrased question finds
    each at rank 1, and the hit's passage holds the sentence, at the right offsets and (PDF) page."""
    pytest.importorskip("twostage.ingest.passages", reason="splitting into passages (h26-passages) not here yet")
    made = write_folder(tmp_path / "docs", text_megabytes=0.5)  # 0.5 MB of text: ~1,700 passages to encode
    index = tmp_path / "c"
    done = twostage("index", str(tmp_path / "docs"), "--index", str(index), "--model", str(minilm_path), "--quiet")
    assert done.returncode == 0, done.stderr
    from twostage.indexes.sharded import open_collection

    with open_collection(index) as collection:
        texts = {d.id: d.text for d in collection.iter_documents()}
    for kind, (name, _, fact) in made.items():
        question = FACTS[kind][1]
        found = twostage("search", str(index), question, "--json", "--top-k", "3")
        assert found.returncode == 0, found.stderr
        hit = json.loads(found.stdout)["hits"][0]
        assert hit["doc_id"] == name, (kind, question, [h["doc_id"] for h in json.loads(found.stdout)["hits"]])
        passage = hit["passage"]
        assert squeeze(fact) in squeeze(passage["text"]), (kind, passage)
        assert texts[name][passage["start"] : passage["end"]] == passage["text"]
        assert passage["page"] == (4 if kind == "pdf" else None), (kind, passage["page"])
