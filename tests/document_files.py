"""Real document files for the ingestion tests, made with the libraries people make them with (fpdf2 for PDF,
python-docx for DOCX): each holds one known sentence deep inside filler text, so a paraphrased question must find it.
"""

from __future__ import annotations

import random
from pathlib import Path

#: what fills the files around their known sentence: plain statements on unrelated everyday topics
FILLER = [
    "The committee reviewed the quarterly budget and approved two new positions.",
    "Fresh basil loses its aroma quickly once the leaves are cut.",
    "The regional train timetable changes twice a year, in spring and in autumn.",
    "Volunteers repainted the fence around the community garden last weekend.",
    "A good pair of walking boots needs a few weeks to be broken in.",
    "The library extended its opening hours during the examination period.",
    "Most houseplants prefer indirect light and should be watered sparingly.",
    "The museum shop sells postcards, posters and small replicas of sculptures.",
    "Heavy rain delayed the harvest in several valleys this season.",
    "The orchestra rehearses on Tuesday evenings in the old school hall.",
    "Cyclists are asked to use the lane on the river side of the bridge.",
    "The bakery on the corner opens at six and sells out of rye bread by noon.",
    "An annual inspection keeps the heating system running efficiently.",
    "The chess club welcomes beginners on the first Monday of every month.",
    "Wooden floors should be cleaned with a damp cloth rather than a wet mop.",
    "The city council published a new plan for parking in the old town.",
    "Children at the summer camp learned to tie knots and read a compass.",
    "The printer on the second floor needs a new toner cartridge.",
]

#: the known sentences and the paraphrased questions that must find them, one per generated file
FACTS = {
    "markdown": (
        "The lighthouse keeper on Skellig Rock rowed to the mainland for fresh drinking water every second Tuesday.",
        "How often did the Skellig lighthouse keeper fetch water from the mainland?",
    ),
    "html": (
        "Our greenhouse tomatoes are grafted onto wild rootstock, which makes them resistant to soil fungus.",
        "Why do the greenhouse tomato plants resist fungal disease in the soil?",
    ),
    "pdf": (
        "Employees may carry over at most twelve days of unused vacation leave into the following calendar year.",
        "How many unused holiday days can staff transfer to next year?",
    ),
    "docx": (
        "The bridge across the fjord was closed for eleven weeks while engineers replaced its steel suspension cables.",
        "Why was the fjord bridge shut for almost three months?",
    ),
    "text": (
        "The observatory's telescope mirror was recoated with aluminium after forty years of service.",
        "When was the observatory's telescope mirror given a new coating?",
    ),
}


def filler_paragraphs(count: int, seed: int, sentences: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(FILLER, sentences)) for _ in range(count)]


def write_markdown(path: Path, sections: int = 30) -> tuple[str, str]:
    """A long Markdown handbook (front matter, headings, a code block); the fact sits in a section near the end."""
    fact = FACTS["markdown"][0]
    parts = ["---", "title: Coastal Stations Handbook", "---", "", "# Coastal Stations Handbook", ""]
    for i, paragraph in enumerate(filler_paragraphs(sections, seed=1)):
        parts += [f"## Station notes {i + 1}", "", paragraph, ""]
        if i == 3:
            parts += ["```", "# not a heading: a comment in a code block", "```", ""]
        if i == sections - 4:
            parts += ["### Skellig Rock", "", f"{paragraph} {fact}", ""]
    path.write_text("\n".join(parts), encoding="utf-8")
    return "Coastal Stations Handbook", fact


def write_html(path: Path, paragraphs: int = 25) -> tuple[str, str]:
    """A web page: navigation, a sidebar and a footer around an article whose fact sits deep inside."""
    fact = FACTS["html"][0]
    body = []
    for i, paragraph in enumerate(filler_paragraphs(paragraphs, seed=2)):
        if i % 6 == 0:
            body.append(f"<h2>Growing notes, part {i // 6 + 1}</h2>")
        body.append(f"<p>{paragraph}{' ' + fact if i == paragraphs - 3 else ''}</p>")
    nav = "".join(f'<li><a href="/p{i}">Menu entry {i}</a></li>' for i in range(12))
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Greenhouse Diary</title>"
        "<style>body{font-family:sans-serif}</style><script>var tracking = 'do not index me';</script></head><body>"
        f"<header><nav><ul>{nav}</ul></nav></header>"
        "<aside><h3>Related</h3><p>Subscribe to our newsletter for weekly offers and discount codes.</p></aside>"
        f"<main><article><h1>Greenhouse Diary</h1>{''.join(body)}</article></main>"
        "<footer><p>Copyright 2026 Example Gardens. All rights reserved. Privacy policy and cookie settings.</p>"
        "</footer></body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return "Greenhouse Diary", fact


def write_pdf(path: Path, pages: int = 5, fact_page: int = 4) -> tuple[str, str]:
    """A PDF of several pages (fpdf2), titled in its metadata; the fact is on page ``fact_page``."""
    from fpdf import FPDF

    fact = FACTS["pdf"][0]
    pdf = FPDF()
    pdf.set_title("Staff Handbook 2026")
    pdf.set_font("Helvetica", size=11)
    paragraphs = filler_paragraphs(pages * 4, seed=3)
    for page in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("Helvetica", style="B", size=14)
        pdf.cell(0, 10, f"Chapter {page}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for j, paragraph in enumerate(paragraphs[(page - 1) * 4 : page * 4]):
            text = f"{paragraph} {fact}" if page == fact_page and j == 2 else paragraph
            pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
    pdf.output(str(path))
    return "Staff Handbook 2026", fact


def write_docx(path: Path, sections: int = 12) -> tuple[str, str]:
    """A Word document (python-docx) with a core-properties title, headings, paragraphs and a table."""
    import docx

    fact = FACTS["docx"][0]
    document = docx.Document()
    document.core_properties.title = "Northern Roads Maintenance Report"
    document.add_heading("Northern Roads Maintenance Report", level=1)
    for i, paragraph in enumerate(filler_paragraphs(sections * 2, seed=4)):
        if i % 2 == 0:
            document.add_heading(f"Section {i // 2 + 1}", level=2)
        document.add_paragraph(f"{paragraph} {fact}" if i == sections * 2 - 3 else paragraph)
        if i == 5:
            table = document.add_table(rows=2, cols=2)
            table.cell(0, 0).text, table.cell(0, 1).text = "Road", "Status"
            table.cell(1, 0).text, table.cell(1, 1).text = "E6", "open"
    document.save(str(path))
    return "Northern Roads Maintenance Report", fact


def write_large_text(path: Path, megabytes: float = 2.0) -> tuple[None, str]:
    """A large plain-text file (about ``megabytes`` MB) with the fact two thirds of the way in."""
    fact = FACTS["text"][0]
    paragraphs = []
    size, target, placed = 0, int(megabytes * 1_000_000), False
    for paragraph in filler_paragraphs(int(target / 300) + 10, seed=5):
        if not placed and size > target * 2 // 3:
            paragraph, placed = f"{paragraph} {fact}", True
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
        if size > target:
            break
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return None, fact


def write_folder(folder: Path, text_megabytes: float = 2.0) -> dict[str, tuple[str, str | None, str]]:
    """All five kinds in ``folder``: {kind: (file name, title, fact)}."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for kind, name, writer in (
        ("markdown", "handbook.md", write_markdown),
        ("html", "diary.html", write_html),
        ("pdf", "staff.pdf", write_pdf),
        ("docx", "roads.docx", write_docx),
        ("text", "archive/observatory.txt", lambda path: write_large_text(path, text_megabytes)),
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        title, fact = writer(folder / name)
        made[kind] = (name, title, fact)
    return made
