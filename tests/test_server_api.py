"""The HTTP API over real HTTP: a uvicorn server on 127.0.0.1, a real collection, the real bi-encoder, httpx."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EXAMPLES

from twostage import Engine
from twostage.indexes.readers import read_corpus
from twostage.reranker.cross_encoder import CrossEncoderReranker
from twostage.server import ServerConfig, ServerThread, create_app

TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BERLIN = "How many people live in Berlin?"


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, minilm) -> Path:
    path = tmp_path_factory.mktemp("server-api") / "collection"
    with Engine.create(path, encoder=minilm, reranker=None) as engine:
        engine.add(read_corpus(EXAMPLES / "corpus.jsonl"))
    return path


@pytest.fixture(scope="module")
def server(collection: Path, minilm, tiny_cross_encoder_dir: Path) -> Iterator[ServerThread]:
    reranker = CrossEncoderReranker(str(tiny_cross_encoder_dir))
    app = create_app(
        lambda: Engine.open(collection, encoder=minilm, reranker=reranker), ServerConfig(token=TOKEN, k=30)
    )
    with ServerThread(app) as running:
        yield running
    assert app.state.stats.counts["server_errors"] == 0, "a request produced a 5xx"


@pytest.fixture()
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@contextlib.contextmanager
def reconfigured(server: ServerThread, **changes: Any) -> Iterator[ServerConfig]:
    """Change the running server's config (it is read per request) and restore it afterwards."""
    config = server.app.state.config
    saved = dataclasses.asdict(config)
    for key, value in changes.items():
        setattr(config, key, value)
    try:
        yield config
    finally:
        for key, value in saved.items():
            setattr(config, key, value)


def search(client: httpx.Client, **body: Any) -> dict[str, Any]:
    reply = client.post("/search", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


# --------------------------------------------------------------------------- endpoints
def test_health_page_and_static_files(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["documents"] == 100
    assert health["read_only"] is False and health["reads_protected"] is False
    assert health["defaults"] == {"k": 30, "top_n": 10, "rerank": True, "first_stage": "dense"}
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="query"' in page.text and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_openapi_schema(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/search", "/search/batch", "/documents", "/documents/{doc_id}", "/health", "/stats"} <= set(paths)
    assert set(paths["/documents/{doc_id}"]) == {"get", "delete"}
    request = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert {"query", "k", "top_n", "rerank", "filter"} <= set(request)
    hit = schema["components"]["schemas"]["HitOut"]["properties"]
    assert {"retrieval_score", "retrieval_rank", "rerank_score", "rerank_rank"} <= set(hit)


def test_no_cdn_backed_docs_page(client: httpx.Client) -> None:
    """Swagger UI and ReDoc fetch their scripts from a CDN (blank offline): not served, and not pointed at."""
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert '"/docs"' not in client.get("/").text


def test_documents_take_top_level_metadata_like_corpus_files(client: httpx.Client) -> None:
    doc = {
        "id": "api/shape",
        "text": "A numbat eats termites.",
        "topic": "animals",
        "year": 2024,
        "metadata": {"source": "api"},
    }
    added = client.post("/documents", json={"documents": [doc]}, headers=AUTH)
    assert added.status_code == 200, added.text
    stored = client.get("/documents/api/shape").json()
    assert stored["metadata"] == {"topic": "animals", "year": 2024, "source": "api"}
    nested = client.post("/documents", json={"documents": [{"id": "x", "text": "y", "topic": [1]}]}, headers=AUTH)
    assert nested.status_code == 422
    assert client.delete("/documents/api/shape", headers=AUTH).status_code == 200


def test_hits_have_one_shape_everywhere(client: httpx.Client, collection: Path, minilm) -> None:
    """HTTP hits, ``SearchResult.to_dict()`` hits and the CLI's ``--json`` hits have the same keys."""
    from test_cli import twostage as cli

    http = search(client, query=BERLIN, k=20, top_n=3, rerank=False)["hits"][0]
    with Engine.open(collection, encoder=minilm, reranker=None) as engine:
        api = engine.search(BERLIN, k=20, top_n=3, rerank=False).to_dict()["hits"][0]
    done = cli("search", str(collection), BERLIN, "--no-rerank", "--json", "--backend", "torch", "--top", "3")
    assert done.returncode == 0, done.stderr
    assert list(http) == list(api) == list(json.loads(done.stdout)["hits"][0])
    assert {"rank", "score", "retrieval_rank", "retrieval_score", "rerank_rank", "rerank_score"} <= set(http)


def test_search_returns_both_stages_and_timings(client: httpx.Client) -> None:
    result = search(client, query=BERLIN, k=20, top_n=5)
    hits = result["hits"]
    assert len(hits) == 5 and result["candidates"] == 20 and result["k"] == 20 and result["top_n"] == 5
    assert result["reranker"] and result["rerank"] is True
    assert [h["rerank_rank"] for h in hits] == [1, 2, 3, 4, 5] == [h["rank"] for h in hits]
    scores = [h["rerank_score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and [h["score"] for h in hits] == scores
    assert all(1 <= h["retrieval_rank"] <= 20 and isinstance(h["retrieval_score"], float) for h in hits)
    assert all(h["title"] and h["text"] and "topic" in h["metadata"] for h in hits)
    assert set(result["timings"]) == {"encode_s", "search_s", "rerank_s", "total_s"}
    assert result["timings"]["rerank_s"] > 0 and result["latency_ms"] > 0


def test_search_without_rerank_is_first_stage_order(client: httpx.Client) -> None:
    result = search(client, query=BERLIN, k=20, top_n=5, rerank=False)
    hits = result["hits"]
    assert [h["retrieval_rank"] for h in hits] == [1, 2, 3, 4, 5] == [h["rank"] for h in hits]
    assert all(h["rerank_score"] is None and h["rerank_rank"] is None for h in hits)
    assert result["reranker"] is None and result["timings"]["rerank_s"] == 0
    assert hits[0]["doc_id"] == "cities-01"


def test_search_effort_is_passed_through(client: httpx.Client) -> None:
    """ef_search / nprobe, like the CLI's --ef-search / --nprobe: echoed back, same hits on an exact index."""
    plain = search(client, query=BERLIN, k=20, top_n=5, rerank=False)
    effort = search(client, query=BERLIN, k=20, top_n=5, rerank=False, ef_search=300, nprobe=4)
    assert (plain["ef_search"], plain["nprobe"]) == (None, None) and (effort["ef_search"], effort["nprobe"]) == (300, 4)
    assert [h["doc_id"] for h in effort["hits"]] == [h["doc_id"] for h in plain["hits"]]


def test_first_stage_is_a_request_field(client: httpx.Client) -> None:
    """first_stage, like the CLI's --first-stage: dense by default, bm25 and hybrid on request, echoed back."""
    dense = search(client, query="sourdough starter flour", k=20, top_n=5, rerank=False)
    bm25 = search(client, query="sourdough starter flour", k=20, top_n=5, rerank=False, first_stage="bm25")
    hybrid = search(
        client, query="sourdough starter flour", k=20, top_n=5, rerank=False, first_stage="hybrid:weighted:0.7"
    )
    assert (dense["first_stage"], bm25["first_stage"], hybrid["first_stage"]) == (
        "dense",
        "bm25",
        "hybrid:weighted:0.7",
    )
    assert bm25["timings"]["encode_s"] == 0 and bm25["hits"][0]["retrieval_score"] > 0
    assert bm25["hits"][0]["doc_id"] in {h["doc_id"] for h in hybrid["hits"]}
    reply = client.post(
        "/search/batch",
        json={"queries": ["sourdough starter flour", BERLIN], "first_stage": "hybrid", "k": 20, "top_n": 5},
    )
    assert reply.status_code == 200 and [r["first_stage"] for r in reply.json()["results"]] == ["hybrid", "hybrid"]
    bad = client.post("/search", json={"query": "a", "first_stage": "sparse"})
    assert bad.status_code == 422 and "first_stage" in bad.json()["error"]


def test_second_stage_levers_are_request_fields(
    client: httpx.Client, collection: Path, minilm, tiny_cross_encoder_dir: Path
) -> None:
    """prf, fusion and rerank_depth, like the CLI's --prf / --fusion / --rerank-depth: the same hits as the engine
    given the same options, echoed back; omitted ones are null (the engine's defaults); malformed ones are 422."""
    levers = {"prf": "3:0.5", "fusion": "rrf", "rerank_depth": 10}
    served = search(client, query=BERLIN, k=20, top_n=5, **levers)
    with Engine.open(collection, encoder=minilm, reranker=CrossEncoderReranker(str(tiny_cross_encoder_dir))) as engine:
        direct = engine.search(BERLIN, k=20, top_n=5, **levers)
    assert [h["doc_id"] for h in served["hits"]] == [h.doc_id for h in direct.hits]
    assert served["hits"][0]["score"] == pytest.approx(direct.hits[0].score, abs=1e-5)
    assert {name: served[name] for name in levers} == levers
    assert all(search(client, query=BERLIN)[name] is None for name in ("prf", "query_tokens", "fusion", "rerank_depth"))
    for body, field in (
        ({"prf": "x:y"}, "prf"),
        ({"fusion": "minmax:7"}, "fusion"),
        ({"query_tokens": "loud"}, "query_tokens"),
        ({"rerank_depth": 0}, "rerank_depth"),
    ):
        bad = client.post("/search", json={"query": BERLIN, **body})
        assert bad.status_code == 422 and bad.json()["error"].startswith(field), bad.text


def test_batcher_batches_only_equal_first_stages() -> None:
    from concurrent.futures import wait

    from twostage.batcher import Batcher

    engine = _RecordingEngine()
    batcher = Batcher(lambda: engine, window_s=0.2, max_batch_queries=8)
    batcher.start()
    futures = [
        batcher.search(["a"], k=5, top_n=1, rerank=True),
        batcher.search(["b"], k=5, top_n=1, rerank=True, first_stage="bm25"),
        batcher.search(["c"], k=5, top_n=1, rerank=True),
    ]
    wait(futures, timeout=30)
    batcher.close()
    assert engine.calls[:2] == [("search", (("a", "c"), 5)), ("search", (("b",), 5, "bm25"))]


def test_defaults_fill_omitted_fields(client: httpx.Client) -> None:
    result = search(client, query=BERLIN)
    assert (result["k"], result["top_n"], result["rerank"]) == (30, 10, True)
    assert result["candidates"] == 30 and len(result["hits"]) == 10


def test_filter_matches_metadata_and_unknown_keys_match_nothing(client: httpx.Client) -> None:
    cities = search(client, query=BERLIN, filter={"topic": "cities"}, top_n=20)
    assert cities["hits"] and all(h["metadata"]["topic"] == "cities" for h in cities["hits"])
    year = cities["hits"][0]["metadata"]["year"]
    for value in (year, str(year)):  # like the CLI's --filter year=2023, a string matches the number
        same = search(client, query=BERLIN, filter={"topic": "cities", "year": value})
        assert same["hits"] and all(h["metadata"]["year"] == year for h in same["hits"])
    unknown = search(client, query=BERLIN, filter={"no-such-key": "x"})
    assert unknown["hits"] == [] and any("filter" in n for n in unknown["notices"])


def test_batch_equals_single_searches(client: httpx.Client) -> None:
    queries = [BERLIN, "photosynthesis in plants", "how to bake sourdough bread"]
    reply = client.post("/search/batch", json={"queries": queries, "k": 20, "top_n": 5})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert [r["query"] for r in results] == queries
    for query, batched in zip(queries, results):
        single = search(client, query=query, k=20, top_n=5)
        assert [h["doc_id"] for h in batched["hits"]] == [h["doc_id"] for h in single["hits"]]
        for a, b in zip(batched["hits"], single["hits"]):
            assert a["retrieval_score"] == pytest.approx(b["retrieval_score"], abs=1e-4)
            assert a["rerank_score"] == pytest.approx(b["rerank_score"], abs=1e-3)


def test_add_get_replace_delete_without_restart(client: httpx.Client) -> None:
    doc = {
        "id": "api/quokka",
        "title": "Quokkas",
        "text": "The quokka is a small wallaby living on Rottnest Island near Perth.",
        "metadata": {"topic": "animals", "year": 2024, "verified": True, "weight_kg": 3.5, "note": None},
    }
    added = client.post("/documents", json={"documents": [doc]}, headers=AUTH)
    assert added.status_code == 200, added.text
    assert added.json()["added"] == 1 and added.json()["documents"] == 101
    stored = client.get("/documents/api/quokka").json()
    assert stored == doc | {"metadata": doc["metadata"]}
    top = search(client, query="small wallaby on Rottnest Island", k=20, top_n=3, rerank=False)
    assert top["hits"][0]["doc_id"] == "api/quokka"
    again = client.post("/documents", json={"documents": [doc]}, headers=AUTH).json()
    assert again["unchanged"] == 1 and again["documents"] == 101
    changed = client.post(
        "/documents", json={"documents": [doc | {"text": doc["text"] + " It is nocturnal."}]}, headers=AUTH
    )
    assert changed.json()["replaced"] == 1
    assert "nocturnal" in client.get("/documents/api/quokka").json()["text"]
    deleted = client.delete("/documents/api/quokka", headers=AUTH)
    assert deleted.status_code == 200 and deleted.json() == {"deleted": "api/quokka", "documents": 100}
    assert client.get("/documents/api/quokka").status_code == 404
    after = search(client, query="small wallaby on Rottnest Island", k=100, top_n=100, rerank=False)
    assert "api/quokka" not in {h["doc_id"] for h in after["hits"]}
    assert client.delete("/documents/api/quokka", headers=AUTH).status_code == 404


def test_stats(client: httpx.Client) -> None:
    search(client, query=BERLIN)
    stats = client.get("/stats").json()
    assert stats["documents"] == 100 and stats["backend"] == "torch" and stats["index_type"]
    assert stats["models"]["bi_encoder"] and stats["models"]["reranker"]
    assert stats["counts"]["queries"] >= 1 and stats["counts"]["search_requests"] >= 1
    latency = stats["latency_ms"]
    assert latency["window"] >= 1 and 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert stats["batching"]["batches"] >= 1


# --------------------------------------------------------------------------- access control
def test_writes_need_the_token(client: httpx.Client) -> None:
    body = {"documents": [{"id": "x", "text": "y"}]}
    missing = client.post("/documents", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "token" in missing.json()["error"]
    assert client.post("/documents", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post("/documents", json=body, headers={"Authorization": TOKEN}).status_code == 401
    assert client.delete("/documents/cities-01").status_code == 401
    assert client.get("/documents/cities-01").status_code == 200  # reads are open by default
    assert client.get("/documents/x").status_code == 404


def test_protected_reads(server: ServerThread, client: httpx.Client) -> None:
    with reconfigured(server, protect_reads=True):
        assert client.get("/health").json()["reads_protected"] is True
        for method, path, kwargs in [
            ("post", "/search", {"json": {"query": BERLIN}}),
            ("post", "/search/batch", {"json": {"queries": [BERLIN]}}),
            ("get", "/documents/cities-01", {}),
            ("get", "/stats", {}),
        ]:
            assert client.request(method, path, **kwargs).status_code == 401, path
            assert client.request(method, path, headers={"Authorization": "Bearer nope"}, **kwargs).status_code == 403
            assert client.request(method, path, headers=AUTH, **kwargs).status_code == 200, path
        assert client.get("/").status_code == 200 and client.get("/health").status_code == 200


def test_read_only_without_a_token(server: ServerThread, client: httpx.Client) -> None:
    with reconfigured(server, token=None, protect_reads=True):
        health = client.get("/health").json()
        assert health["read_only"] is True and health["reads_protected"] is False
        for headers in ({}, AUTH):
            refused = client.post("/documents", json={"documents": [{"id": "x", "text": "y"}]}, headers=headers)
            assert refused.status_code == 403 and "read-only" in refused.json()["error"]
            assert client.delete("/documents/cities-01", headers=headers).status_code == 403
        assert search(client, query=BERLIN)["hits"]  # reads stay open: protect_reads needs a token
    assert client.get("/documents/cities-01").status_code == 200


# --------------------------------------------------------------------------- limits
def test_documented_limit_defaults() -> None:
    config = ServerConfig()
    assert config.limits() == {
        "max_query_chars": 1000,
        "max_k": 1000,
        "max_top_n": 100,
        "max_ef_search": 4096,
        "max_nprobe": 4096,
        "max_batch": 64,
        "max_body_bytes": 1_000_000,
        "max_docs_per_add": 1000,
    }
    assert (config.batch_window_ms, config.max_batch_queries, config.read_only) == (5, 32, True)


def test_each_limit_has_a_clear_4xx(client: httpx.Client) -> None:
    def check(reply: httpx.Response, status: int, words: str) -> None:
        assert reply.status_code == status, reply.text
        assert words in reply.json()["error"], reply.json()

    check(client.post("/search", json={"query": "x" * 1001}), 422, "max_query_chars")
    assert client.post("/search", json={"query": "x" * 1000, "k": 5}).status_code == 200
    check(client.post("/search", json={"query": "a", "k": 1001}), 422, "max_k")
    check(client.post("/search", json={"query": "a", "top_n": 101}), 422, "max_top_n")
    check(client.post("/search", json={"query": "a", "ef_search": 4097}), 422, "max_ef_search")
    check(client.post("/search", json={"query": "a", "nprobe": 0}), 422, "nprobe must be a positive integer")
    check(client.post("/search", json={"query": "a", "nprobe": 4097}), 422, "max_nprobe")
    check(client.post("/search/batch", json={"queries": ["a"] * 65}), 413, "max_batch")
    check(client.post("/search/batch", json={"queries": ["a", "b" * 1001]}), 422, "queries[1]")
    docs = [{"id": f"d{i}", "text": "t"} for i in range(1001)]
    check(client.post("/documents", json={"documents": docs}, headers=AUTH), 413, "max_docs_per_add")
    big = b'{"query": "' + b"a" * 1_000_000 + b'"}'
    check(client.post("/search", content=big, headers={"content-type": "application/json"}), 413, "max_body_bytes")
    assert client.get("/health").status_code == 200  # the server is fine afterwards


def _chunked(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


def test_streamed_body_over_the_limit_without_length(client: httpx.Client) -> None:
    reply = client.post(
        "/search", content=_chunked(b"[" + b"1," * 600_000 + b"1]"), headers={"content-type": "application/json"}
    )
    assert reply.status_code == 413 and "max_body_bytes" in reply.json()["error"]


# --------------------------------------------------------------------------- a corpus of bad requests
JSON = {"content-type": "application/json"}
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int]] = [
    # (id, method, path, httpx kwargs, expected status)
    ("missing-query", "POST", "/search", {"json": {}}, 422),
    ("query-null", "POST", "/search", {"json": {"query": None}}, 422),
    ("query-number", "POST", "/search", {"json": {"query": 5}}, 422),
    ("query-list", "POST", "/search", {"json": {"query": ["a", "b"]}}, 422),
    ("query-object", "POST", "/search", {"json": {"query": {"text": "a"}}}, 422),
    ("query-empty", "POST", "/search", {"json": {"query": ""}}, 422),
    ("query-blank", "POST", "/search", {"json": {"query": "  \n\t "}}, 422),
    ("k-string", "POST", "/search", {"json": {"query": "a", "k": "5"}}, 422),
    ("k-float", "POST", "/search", {"json": {"query": "a", "k": 5.5}}, 422),
    ("k-bool", "POST", "/search", {"json": {"query": "a", "k": True}}, 422),
    ("k-negative", "POST", "/search", {"json": {"query": "a", "k": -1}}, 422),
    ("k-zero", "POST", "/search", {"json": {"query": "a", "k": 0}}, 422),
    ("k-huge", "POST", "/search", {"json": {"query": "a", "k": 10**40}}, 422),
    ("top-n-negative", "POST", "/search", {"json": {"query": "a", "top_n": -5}}, 422),
    ("top-n-huge", "POST", "/search", {"json": {"query": "a", "top_n": 2**63}}, 422),
    ("top-n-string", "POST", "/search", {"json": {"query": "a", "top_n": "ten"}}, 422),
    ("rerank-string", "POST", "/search", {"json": {"query": "a", "rerank": "yes"}}, 422),
    ("rerank-int", "POST", "/search", {"json": {"query": "a", "rerank": 1}}, 422),
    ("filter-list", "POST", "/search", {"json": {"query": "a", "filter": ["topic", "cities"]}}, 422),
    ("filter-string", "POST", "/search", {"json": {"query": "a", "filter": "topic=cities"}}, 422),
    ("filter-nested", "POST", "/search", {"json": {"query": "a", "filter": {"topic": {"$ne": 1}}}}, 422),
    ("filter-nan", "POST", "/search", {"content": b'{"query": "a", "filter": {"year": NaN}}', "headers": JSON}, 422),
    (
        "filter-infinity",
        "POST",
        "/search",
        {"content": b'{"query": "a", "filter": {"year": Infinity}}', "headers": JSON},
        422,
    ),
    ("filter-huge-int", "POST", "/search", {"json": {"query": "a", "filter": {"year": 10**30}}}, 422),
    ("unknown-field", "POST", "/search", {"json": {"query": "a", "topn": 3}}, 422),
    ("body-is-list", "POST", "/search", {"json": ["a"]}, 422),
    ("body-is-string", "POST", "/search", {"json": "a"}, 422),
    ("body-empty", "POST", "/search", {}, 422),
    ("invalid-json", "POST", "/search", {"content": b'{"query": "a",', "headers": JSON}, 400),
    ("invalid-utf8", "POST", "/search", {"content": b'{"query": "caf\xe9 \xff\xfe"}', "headers": JSON}, 400),
    ("lone-surrogate", "POST", "/search", {"content": b'{"query": "\\ud800 berlin"}', "headers": JSON}, 422),
    ("deep-nesting", "POST", "/search", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": JSON}, 400),
    (
        "not-json-content-type",
        "POST",
        "/search",
        {"content": b"query=berlin", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        422,
    ),
    ("batch-missing", "POST", "/search/batch", {"json": {"query": "a"}}, 422),
    ("batch-empty", "POST", "/search/batch", {"json": {"queries": []}}, 422),
    ("batch-not-list", "POST", "/search/batch", {"json": {"queries": "a"}}, 422),
    ("batch-mixed-types", "POST", "/search/batch", {"json": {"queries": ["a", 3]}}, 422),
    ("batch-one-empty", "POST", "/search/batch", {"json": {"queries": ["a", ""]}}, 422),
    ("add-no-documents-field", "POST", "/documents", {"json": {"id": "x", "text": "y"}, "headers": AUTH}, 422),
    ("add-empty-list", "POST", "/documents", {"json": {"documents": []}, "headers": AUTH}, 422),
    ("add-missing-text", "POST", "/documents", {"json": {"documents": [{"id": "x"}]}, "headers": AUTH}, 422),
    ("add-empty-text", "POST", "/documents", {"json": {"documents": [{"id": "x", "text": ""}]}, "headers": AUTH}, 422),
    ("add-id-number", "POST", "/documents", {"json": {"documents": [{"id": 7, "text": "y"}]}, "headers": AUTH}, 422),
    ("add-id-empty", "POST", "/documents", {"json": {"documents": [{"id": "", "text": "y"}]}, "headers": AUTH}, 422),
    (
        "add-id-huge",
        "POST",
        "/documents",
        {"json": {"documents": [{"id": "x" * 5000, "text": "y"}]}, "headers": AUTH},
        422,
    ),
    (
        "add-metadata-nested",
        "POST",
        "/documents",
        {"json": {"documents": [{"id": "x", "text": "y", "metadata": {"a": [1, 2]}}]}, "headers": AUTH},
        422,
    ),
    (
        "add-metadata-nan",
        "POST",
        "/documents",
        {"content": b'{"documents": [{"id": "x", "text": "y", "metadata": {"a": NaN}}]}', "headers": JSON | AUTH},
        422,
    ),
    (
        "add-duplicate-ids",
        "POST",
        "/documents",
        {"json": {"documents": [{"id": "dup", "text": "a"}, {"id": "dup", "text": "b"}]}, "headers": AUTH},
        400,
    ),
    (
        "add-surrogate-text",
        "POST",
        "/documents",
        {"content": b'{"documents": [{"id": "x", "text": "\\udfff"}]}', "headers": JSON | AUTH},
        422,
    ),
    ("get-unknown-id", "GET", "/documents/no-such-doc", {}, 404),
    ("get-percent-ff", "GET", "/documents/%FF%FE", {}, 404),
    ("get-no-id", "GET", "/documents/", {}, 404),
    ("delete-unknown-id", "DELETE", "/documents/no-such-doc", {"headers": AUTH}, 404),
    ("delete-invalid-utf8-id", "DELETE", "/documents/%C3%28", {"headers": AUTH}, 404),
    ("wrong-method", "PUT", "/search", {"json": {"query": "a"}}, 405),
    ("get-search", "GET", "/search", {}, 405),
    ("unknown-route", "GET", "/no/such/route", {}, 404),
    (
        "auth-garbage",
        "POST",
        "/documents",
        {"json": {"documents": []}, "headers": {"Authorization": "Basic Zm9vOmJhcg=="}},
        401,
    ),
]


@pytest.mark.parametrize(
    "method,path,kwargs,status", [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_get_a_clear_4xx(client: httpx.Client, method: str, path: str, kwargs: dict, status: int) -> None:
    reply = client.request(method, path, **kwargs)
    assert reply.status_code == status, reply.text[:300]
    body = reply.json()
    assert isinstance(body["error"], str) and body["error"]


ODD_BUT_VALID = [
    ("/search", {"query": "nul \u0000 byte"}),
    ("/search", {"query": "emoji 🦘 and RTL שלום and CJK 北京"}),
    ("/search", {"query": "x" * 1000, "k": 1, "top_n": 1}),
    ("/search", {"query": "a", "k": 1000, "top_n": 100, "rerank": False}),
    ("/search", {"query": "a", "filter": {'we"ird': "x", "$.path": 1, "": True, "topic": None}}),
    ("/search", {"query": "a", "filter": {}}),
    ("/search", {"query": "a", "k": None, "top_n": None, "rerank": None, "filter": None}),
    ("/search/batch", {"queries": ["a"] * 64, "k": 5, "top_n": 1}),
]


@pytest.mark.parametrize("path,body", ODD_BUT_VALID, ids=range(len(ODD_BUT_VALID)))
def test_odd_but_valid_requests_are_answered(client: httpx.Client, path: str, body: dict) -> None:
    reply = client.post(path, json=body)
    assert reply.status_code == 200, reply.text[:300]


def test_engine_usage_errors_are_400(client: httpx.Client) -> None:
    blank = client.post("/documents", json={"documents": [{"id": "blank", "text": "   "}]}, headers=AUTH)
    assert blank.status_code == 400 and "text" in blank.json()["error"]
    assert client.get("/documents/blank").status_code == 404


def test_bad_request_corpus_is_large_and_server_survives(client: httpx.Client) -> None:
    assert len(BAD_REQUESTS) >= 30
    assert client.get("/health").json()["documents"] == 100
    assert search(client, query=BERLIN, k=10, top_n=3)["hits"][0]["doc_id"].startswith("cities")


def _raw(server: ServerThread, request: bytes) -> int:
    """Send bytes no HTTP client library would send; the status code of the reply."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n{}",
        b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{}",
        b"GET /documents/caf\xc3\xa9\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"NONSENSE\r\n\r\n",
    ],
    ids=["length-not-a-number", "length-negative", "length-huge", "raw-bytes-in-path", "not-http"],
)
def test_malformed_http_gets_a_4xx(server: ServerThread, request_bytes: bytes) -> None:
    assert 400 <= _raw(server, request_bytes) < 500


# --------------------------------------------------------------------------- the command line
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_twostage_serve_command(collection: Path, tmp_path: Path) -> None:
    """``twostage serve`` as a user runs it: read-only without a token, 127.0.0.1, --backend, stops on Ctrl-C."""
    copy = tmp_path / "copy"
    shutil.copytree(collection, copy)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "TWOSTAGE_TOKEN"} | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twostage.cli",
            "serve",
            str(copy),
            "--port",
            str(port),
            "--k",
            "15",
            "--backend",
            "onnx",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail(f"twostage serve did not come up: {proc.stdout.read() if proc.stdout else ''}")
        assert health["read_only"] is True and health["defaults"]["k"] == 15
        refused = httpx.post(f"http://127.0.0.1:{port}/documents", json={"documents": [{"id": "a", "text": "b"}]})
        assert refused.status_code == 403
        result = httpx.post(f"http://127.0.0.1:{port}/search", json={"query": BERLIN, "top_n": 3}, timeout=60).json()
        assert result["candidates"] == 15 and result["hits"][0]["rerank_score"] is not None
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "read-only" in output and "maxsim" in output.lower()  # offline: the default cross-encoder falls back
    assert f"http://127.0.0.1:{port}" in output
    assert "onnx/fp32" in output  # --backend reaches the engine (a torch-built collection takes any float backend)


def test_serve_refuses_bad_setups(tmp_path: Path) -> None:
    from twostage.cli import main

    assert main(["serve", str(tmp_path / "nothing-here")]) == 2
    assert main(["serve", str(tmp_path), "--protect-reads"]) == 2
    assert main(["serve", str(tmp_path), "--max-k", "0"]) == 2


# --------------------------------------------------------------------------- the batcher, without models
class _RecordingEngine:
    """Stands in for Engine: records each call and the thread it ran on."""

    def __init__(self) -> None:
        import threading

        self.collection: list[str] = []
        self.calls: list[tuple[str, Any]] = []
        self.threads: set[int] = set()
        self._thread_id = threading.get_ident

    def search_many(self, queries: list[str], request: Any) -> list[tuple]:
        k, first_stage = request.candidate_depth, request.first_stage
        self.threads.add(self._thread_id())
        if "boom" in queries:
            raise ValueError("boom")
        time.sleep(0.02)
        self.calls.append(("search", (tuple(queries), k) + ((first_stage,) if first_stage != "dense" else ())))
        return [(q, k, len(self.collection)) for q in queries]

    def add(self, ids: list[str]) -> int:
        self.threads.add(self._thread_id())
        self.calls.append(("add", tuple(ids)))
        self.collection.extend(ids)
        return len(self.collection)

    def close(self) -> None:
        self.calls.append(("close", None))


def test_batcher_batches_by_key_and_orders_writes() -> None:
    from concurrent.futures import wait

    from twostage.batcher import Batcher, WorkerStopped

    engine = _RecordingEngine()
    batcher = Batcher(lambda: engine, window_s=0.2, max_batch_queries=8)
    batcher.start()
    first = [batcher.search([f"q{i}"], k=5, top_n=1, rerank=True) for i in range(3)]
    other_k = batcher.search(["other"], k=7, top_n=1, rerank=True)
    write = batcher.call(lambda e: e.add(["a", "b"]), write=True)
    after = batcher.search(["after"], k=5, top_n=1, rerank=True)
    bad = [batcher.search(["boom"], k=9, top_n=1, rerank=True), batcher.search(["fine"], k=9, top_n=1, rerank=True)]
    wait([*first, other_k, write, after, *bad], timeout=30)
    assert [f.result()[0] for f in first] == [("q0", 5, 0), ("q1", 5, 0), ("q2", 5, 0)]  # one pass, before the add
    assert other_k.result() == [("other", 7, 0)] and write.result() == 2
    assert after.result() == [("after", 5, 2)]  # queued after the write: sees it
    with pytest.raises(ValueError):
        bad[0].result()
    assert bad[1].result() == [("fine", 9, 2)]  # a failing neighbour does not fail it
    assert engine.calls[:3] == [("search", (("q0", "q1", "q2"), 5)), ("search", (("other",), 7)), ("add", ("a", "b"))]
    stats = batcher.stats_dict()
    assert stats["max_batch_size"] == 3 and stats["writes"] == 1
    batcher.close()
    assert engine.calls[-1] == ("close", None) and len(engine.threads) == 1
    with pytest.raises(WorkerStopped):
        batcher.search(["late"], k=5, top_n=1, rerank=True).result()


def test_batcher_reports_open_errors() -> None:
    from twostage.batcher import Batcher

    def fail() -> None:
        raise FileNotFoundError("no collection here")

    with pytest.raises(FileNotFoundError):
        Batcher(fail).start()
