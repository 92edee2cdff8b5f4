"""The search page in a real headless browser (Debian's chromium driven by Playwright for Python).

Screenshots go to ``test-artifacts/`` (gitignored). Skipped, with the reason, where /usr/bin/chromium is absent:
install it with ``apt-get install -y chromium`` (``.ci/run`` does).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO
from test_passages import handbook

from twostage import Engine
from twostage.indexes.documents import Document
from twostage.indexes.readers import read_corpus
from twostage.reranker.cross_encoder import CrossEncoderReranker
from twostage.server import ServerConfig, ServerThread, create_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent: install Debian's browser with 'apt-get install -y chromium'", allow_module_level=True
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, minilm, tiny_cross_encoder_dir: Path) -> Iterator[ServerThread]:
    path = tmp_path_factory.mktemp("web-page") / "collection"
    with Engine.create(path, encoder=minilm, reranker=None) as engine:
        engine.add(read_corpus(EXAMPLES / "corpus.jsonl"))
        engine.add([Document("handbook", handbook(), "Staff handbook")])  # a long document: split into passages
    reranker = CrossEncoderReranker(str(tiny_cross_encoder_dir))
    app = create_app(lambda: Engine.open(path, encoder=minilm, reranker=reranker), ServerConfig(k=20, top_n=5))
    running = ServerThread(app).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def page(server: ServerThread) -> Iterator[sync_api.Page]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def test_search_page_end_to_end(server: ServerThread, page: sync_api.Page) -> None:
    expect = sync_api.expect
    page.goto(server.url + "/")
    expect(page.locator("#server-status")).to_contain_text("connected · 101 documents · read-only")
    expect(page.locator("#k")).to_have_value("20")

    # Type a query and wait for the results a user would see.
    page.fill("#query", "How many people live in Berlin?")
    page.press("#query", "Enter")
    hits = page.locator("#results .hit")
    expect(hits).to_have_count(5)
    first = hits.first
    expect(first.locator(".rank")).to_have_text("1")
    expect(first.locator(".title")).not_to_be_empty()
    assert len(first.locator(".snippet").inner_text()) > 40
    expect(page.locator("#results .rerank-score")).to_have_count(5)
    expect(page.locator("#results .retrieval-score")).to_have_count(5)
    assert re.fullmatch(r"rerank score -?\d+\.\d{3} \(rank 1\)", first.locator(".rerank-score").inner_text())
    assert re.fullmatch(r"first-stage score -?\d+\.\d{3} \(rank \d+\)", first.locator(".retrieval-score").inner_text())
    summary = page.locator("#summary")
    expect(summary).to_contain_text("5 results from 20 candidates (k=20), reranked by")
    for stage in ("encode", "search", "rerank", "total"):
        assert re.search(rf"{stage} \d+\.\d ms", summary.inner_text()), summary.inner_text()
    expect(page.locator("#message")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "web-page-results.png"), full_page=True)

    # Rerank off: the second-stage scores disappear and the order is the first stage's.
    page.uncheck("#rerank")
    expect(page.locator("#results .rerank-score")).to_have_count(0)
    expect(summary).to_contain_text("first stage only")
    expect(hits).to_have_count(5)
    expect(first.locator(".retrieval-score")).to_contain_text("(rank 1)")
    expect(first.locator(".title")).to_have_text("Population of Berlin")
    page.screenshot(path=str(ARTIFACTS / "web-page-first-stage.png"), full_page=True)

    # Candidate depth: k is sent with the query.
    page.fill("#k", "7")
    page.press("#query", "Enter")
    expect(summary).to_contain_text("from 7 candidates (k=7)")
    expect(summary).to_contain_text("first stage dense")

    # First stage: the selector sends first_stage and searches again; BM25 finds the exact word first.
    page.select_option("#first-stage", "bm25")
    expect(summary).to_contain_text("first stage bm25")
    expect(first.locator(".title")).to_contain_text("Berlin")
    page.select_option("#first-stage", "hybrid")
    expect(summary).to_contain_text("first stage hybrid")
    expect(hits).to_have_count(5)
    page.screenshot(path=str(ARTIFACTS / "web-page-hybrid.png"), full_page=True)
    page.select_option("#first-stage", "dense")

    # An error reply is shown as such (k over the server's limit).
    page.fill("#k", "5000")
    page.press("#query", "Enter")
    message = page.locator("#message")
    expect(message).to_contain_text("The server returned an error (422)")
    expect(message).to_contain_text("max_k")
    page.screenshot(path=str(ARTIFACTS / "web-page-error.png"), full_page=True)

    # A long document: the hit is the passage that matched, placed in its document, the query's words marked.
    page.fill("#k", "20")
    page.fill("#query", "parking spaces for bicycles")
    expect(page.locator("#search-button")).to_be_enabled()  # a search the k change started has answered
    page.press("#query", "Enter")
    expect(first.locator(".title")).to_have_text("Staff handbook", timeout=30_000)
    expect(first.locator(".where")).to_contain_text(re.compile(r"passage \d+ of \d+ · Staff handbook › Facilities"))
    expect(first.locator(".snippet")).to_contain_text("forty spaces reserved for bicycles")
    assert {"parking", "spaces", "bicycles"} <= {m.lower() for m in first.locator(".snippet mark").all_inner_texts()}
    assert "Office hours" not in first.locator(".snippet").inner_text()  # the passage, not the whole handbook
    # Explain: the server says which passage words matched (BM25's terms, MaxSim's aligned words); the page marks them.
    page.check("#explain")
    expect(page.locator("#search-button")).to_be_enabled(timeout=60_000)
    expect(first.locator(".title")).to_have_text("Staff handbook", timeout=60_000)
    marked = {m.lower() for m in first.locator(".snippet mark").all_inner_texts()}
    assert {"parking", "spaces", "bicycles"} <= marked, marked
    page.screenshot(path=str(ARTIFACTS / "web-page-passage.png"), full_page=True)
    page.uncheck("#explain")
    expect(page.locator("#search-button")).to_be_enabled(timeout=60_000)

    # The server goes away: the page says it is unreachable.
    server.stop()
    page.fill("#k", "20")
    page.press("#query", "Enter")
    expect(message).to_contain_text("Cannot reach the server")
    expect(page.locator("#server-status")).to_have_text("server unreachable")
    expect(hits).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "web-page-unreachable.png"), full_page=True)
