"""The extraction result: page and heading lookups by character offset."""

from twostage.ingest.extract import Extracted, Page, close_sections


def test_page_and_heading_path_by_offset():
    text = "# A\nintro\n## B\nbody b\n## C\nbody c\n"
    sections = close_sections([(1, "A", 0), (2, "B", 10), (2, "C", 22)], len(text))
    doc = Extracted(text, title="A", pages=[Page(1, 0, 15), Page(2, 15, len(text))], sections=sections).to_document(
        "a.md"
    )
    assert doc.id == "a.md" and doc.title == "A" and doc.text == text
    assert [s.end for s in doc.sections] == [len(text), 22, len(text)]
    assert doc.heading_path(3) == ["A"]
    assert doc.heading_path(12) == ["A", "B"]
    assert doc.heading_path(30) == ["A", "C"]
    assert doc.page_at(0) == 1 and doc.page_at(14) == 1 and doc.page_at(15) == 2
    assert Extracted("plain").to_document("p").page_at(3) is None


def test_markdown_front_matter_title_without_a_yaml_parser():
    from twostage.ingest.text_formats import extract_markdown

    got = extract_markdown(b'---\nauthor: me\ntitle: "Quoted: a title"\n---\n# Heading\n\nbody\n', "a.md")
    assert got.title == "Quoted: a title" and got.sections[0].title == "Heading"
    assert got.text.index("# Heading") == got.sections[0].start
    assert extract_markdown(b"---\ntitle: >\n  folded\n---\nplain body\n", "b.md").title is None
