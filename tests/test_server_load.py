"""A bounded load test on 127.0.0.1: 32 search clients and 2 writers at once, then an exact check of the collection.

Bounded in count (a fixed number of requests per client) and in time (TIME_CAP_S); it only ever talks to the
server it started on the loopback interface. Throughput and latency percentiles are printed and written to
``test-artifacts/server_load.json``; ``benchmarks/bench_server_load.sh`` runs this test with
``TWOSTAGE_RESULTS_DIR=benchmarks/results`` to refresh the numbers the README quotes.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import EXAMPLES, REPO

from twostage import Engine
from twostage.indexes.readers import read_corpus
from twostage.reranker.cross_encoder import CrossEncoderReranker
from twostage.server import ServerConfig, ServerThread, create_app

TOKEN = "load-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEARCH_CLIENTS = 32
SEARCHES_PER_CLIENT = 8
NEW_DOCS = 24  # added two per call by one writer; the other writer deletes the even ones and replaces some odd ones
K, TOP_N = 30, 10
TIME_CAP_S = 120.0
RESULTS = Path(os.environ.get("TWOSTAGE_RESULTS_DIR", REPO / "test-artifacts")) / "server_load.json"
QUERIES = [
    "How many people live in Berlin?",
    "what do plants need for photosynthesis",
    "how is sourdough bread made",
    "causes of inflation in an economy",
    "largest planets of the solar system",
    "symptoms of the common cold",
    "how do vaccines train the immune system",
    "history of the printing press",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, minilm, tiny_cross_encoder_dir: Path) -> Iterator[ServerThread]:
    path = tmp_path_factory.mktemp("server-load") / "collection"
    with Engine.create(path, encoder=minilm, reranker=None) as engine:
        engine.add(read_corpus(EXAMPLES / "corpus.jsonl"))
    reranker = CrossEncoderReranker(str(tiny_cross_encoder_dir))
    config = ServerConfig(token=TOKEN, k=K, top_n=TOP_N, max_top_n=1000)
    app = create_app(lambda: Engine.open(path, encoder=minilm, reranker=reranker), config)
    with ServerThread(app) as running:
        yield running


def new_doc(i: int, version: int = 1) -> dict[str, Any]:
    return {
        "id": f"load-{i:03d}",
        "title": f"Load test document {i}",
        "text": f"Load test passage number {i}, version {version}, about lighthouses and coastal navigation.",
        "metadata": {"source": "load", "version": version},
    }


class Log:
    """What the clients saw: latencies, failures and when each write was acknowledged."""

    def __init__(self) -> None:
        self.search_latencies: list[float] = []
        self.write_latencies: list[float] = []
        self.errors: list[str] = []
        self.deleted_at: dict[str, float] = {}
        self.added: dict[int, asyncio.Event] = {}


async def search_client(client: httpx.AsyncClient, n: int, log: Log) -> None:
    for i in range(SEARCHES_PER_CLIENT):
        query = QUERIES[(n + i) % len(QUERIES)]
        sent = time.perf_counter()
        reply = await client.post("/search", json={"query": query, "rerank": (n + i) % 4 != 0})
        log.search_latencies.append(time.perf_counter() - sent)
        if reply.status_code != 200:
            log.errors.append(f"search {reply.status_code}: {reply.text[:200]}")
            continue
        result = reply.json()
        ids = [h["doc_id"] for h in result["hits"]]
        if result["query"] != query or len(ids) != TOP_N or len(set(ids)) != len(ids):
            log.errors.append(f"search for {query!r} returned {ids}")
        ranks = [h["rank"] for h in result["hits"]]
        if ranks != list(range(1, len(ids) + 1)):
            log.errors.append(f"ranks {ranks}")
        gone = [d for d in ids if d in log.deleted_at and log.deleted_at[d] < sent]
        if gone:
            log.errors.append(f"search returned documents deleted before it was sent: {gone}")


async def adder(client: httpx.AsyncClient, log: Log) -> None:
    for i in range(0, NEW_DOCS, 2):
        sent = time.perf_counter()
        reply = await client.post("/documents", json={"documents": [new_doc(i), new_doc(i + 1)]}, headers=AUTH)
        log.write_latencies.append(time.perf_counter() - sent)
        if reply.status_code != 200 or reply.json()["added"] != 2:
            log.errors.append(f"add {reply.status_code}: {reply.text[:200]}")
        for j in (i, i + 1):
            log.added[j].set()


async def deleter(client: httpx.AsyncClient, log: Log) -> None:
    for i in range(NEW_DOCS):
        await log.added[i].wait()
        if i % 2 == 0:
            sent = time.perf_counter()
            reply = await client.delete(f"/documents/load-{i:03d}", headers=AUTH)
            log.write_latencies.append(time.perf_counter() - sent)
            if reply.status_code != 200:
                log.errors.append(f"delete {reply.status_code}: {reply.text[:200]}")
            log.deleted_at[f"load-{i:03d}"] = time.perf_counter()
            if (await client.get(f"/documents/load-{i:03d}")).status_code != 404:
                log.errors.append(f"load-{i:03d} still readable after its delete was acknowledged")
        elif i % 4 == 1:
            reply = await client.post("/documents", json={"documents": [new_doc(i, version=2)]}, headers=AUTH)
            if reply.status_code != 200 or reply.json()["replaced"] != 1:
                log.errors.append(f"replace {reply.status_code}: {reply.text[:200]}")


async def run_load(url: str, log: Log) -> float:
    log.added = {i: asyncio.Event() for i in range(NEW_DOCS)}
    limits = httpx.Limits(max_connections=SEARCH_CLIENTS + 4, max_keepalive_connections=SEARCH_CLIENTS + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        tasks = [search_client(client, n, log) for n in range(SEARCH_CLIENTS)] + [
            adder(client, log),
            deleter(client, log),
        ]
        await asyncio.wait_for(asyncio.gather(*tasks), TIME_CAP_S)
        return time.perf_counter() - started


def sequential_baseline(url: str, n: int = 16) -> float:
    """Searches per second for one client sending the same mix one at a time (nothing to batch)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        for i in range(n):
            assert (
                client.post("/search", json={"query": QUERIES[i % len(QUERIES)], "rerank": i % 4 != 0}).status_code
                == 200
            )
        return n / (time.perf_counter() - started)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{p}": round(float(np.percentile(ms, p)), 1) for p in (50, 95, 99)} | {"mean": round(float(ms.mean()), 1)}


def test_concurrent_searches_adds_and_deletes(server: ServerThread) -> None:
    assert server.host == "127.0.0.1"
    baseline = sequential_baseline(server.url)
    log = Log()
    wall = asyncio.run(run_load(server.url, log))
    assert not log.errors, log.errors[:5]
    searches = SEARCH_CLIENTS * SEARCHES_PER_CLIENT
    assert len(log.search_latencies) == searches

    # Nothing lost, nothing duplicated: the index and the store agree on exactly the expected documents.
    expected = {d.id for d in read_corpus(EXAMPLES / "corpus.jsonl")} | {f"load-{i:03d}" for i in range(1, NEW_DOCS, 2)}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        stats = client.get("/stats").json()
        assert stats["documents"] == len(expected)
        everything = client.post(
            "/search", json={"query": "lighthouses and coastal navigation", "k": 1000, "top_n": 1000, "rerank": False}
        ).json()
        ids = [h["doc_id"] for h in everything["hits"]]
        assert len(ids) == len(set(ids)) == everything["candidates"] == len(expected)
        assert set(ids) == expected
        for i in range(NEW_DOCS):
            doc = client.get(f"/documents/load-{i:03d}")
            if i % 2 == 0:
                assert doc.status_code == 404
            else:
                assert doc.json()["metadata"]["version"] == (2 if i % 4 == 1 else 1)

    batching = stats["batching"]
    assert batching["max_batch_size"] > 1, batching  # concurrent queries shared encoder/rerank passes
    report = {
        "clients": {"search": SEARCH_CLIENTS, "writers": 2},
        "requests": {"searches": searches, "writes": len(log.write_latencies)},
        "wall_s": round(wall, 2),
        "throughput_searches_per_s": round(searches / wall, 1),
        "one_client_searches_per_s": round(baseline, 1),
        "search_latency_ms": percentiles(log.search_latencies),
        "write_latency_ms": percentiles(log.write_latencies),
        "batching": {key: batching[key] for key in ("batches", "queries", "mean_batch_size", "max_batch_size")},
        "setup": {
            "documents": len(expected),
            "k": K,
            "top_n": TOP_N,
            "bi_encoder": stats["models"]["bi_encoder"],
            "reranker": "tiny test cross-encoder (3 of 4 searches reranked)",
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
    }
    print("\nserver load test:", json.dumps(report, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
