"""Property-based fuzzing (Hypothesis, bounded and seeded) of the corpus readers and the HTTP API, and the server's
smaller hardening items: a filter key with a quote, an id with a newline, a body over the limit, deep JSON, idle
sockets, the Host header, /stats without paths, no token in the access log, HEAD /health."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twostage.indexes.errors import CorpusError
from twostage.indexes.readers import read_corpus, validate_corpus

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- corpus readers
field_value = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.integers(), max_size=2),
)
record = st.dictionaries(st.sampled_from(["id", "_id", "text", "title", "body", "x", 'y"z']), field_value, max_size=5)


def _read_all(path: Path) -> list:
    try:
        return list(read_corpus(path))
    except CorpusError as err:  # the one error a reader raises, one line naming the file
        assert "\n" not in str(err) and path.name in str(err)
        return []


@FUZZ
@given(
    records=st.lists(record, max_size=8),
    garbage=st.lists(st.binary(max_size=20), max_size=2),
    compressed=st.booleans(),
    cut=st.integers(min_value=0, max_value=40),
)
def test_jsonl_reader_returns_documents_or_one_corpus_error(tmp_path: Path, records, garbage, compressed, cut) -> None:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records) + b"\n".join(garbage)
    path = tmp_path / ("c.jsonl.gz" if compressed else "c.jsonl")
    path.write_bytes(gzip.compress(data)[: max(0, len(gzip.compress(data)) - cut)] if compressed else data)
    docs = _read_all(path)
    if docs:  # a corpus read whole: the pre-pass counts exactly what the add will see, and ids are unique
        assert validate_corpus(path) == len(docs)
        assert len({d.id for d in docs}) == len(docs) and all(d.text.strip() for d in docs)


@FUZZ
@given(
    rows=st.lists(
        st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10), min_size=0, max_size=4),
        max_size=8,
    ),
    delimiter=st.sampled_from(["\t", ","]),
    header=st.booleans(),
    raw=st.binary(max_size=30),
)
def test_delimited_readers_return_documents_or_one_corpus_error(tmp_path: Path, rows, delimiter, header, raw) -> None:
    lines = (["id" + delimiter + "text"] if header else []) + [delimiter.join(r) for r in rows]
    path = tmp_path / ("c.tsv" if delimiter == "\t" else "c.csv")
    path.write_bytes("\n".join(lines).encode("utf-8") + b"\n" + raw)
    docs = _read_all(path)
    if docs:
        assert validate_corpus(path) == len(docs)


# --------------------------------------------------------------------------- the HTTP API
@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, tiny_bi_encoder_dir: Path) -> Path:
    from twostage import Engine

    path = tmp_path_factory.mktemp("fuzz") / "c"
    with Engine.create(path, model=str(tiny_bi_encoder_dir), reranker=None) as engine:
        engine.add([{"id": f"d{i}", "text": f"passage {i} about rivers", 'ke"y': f"v{i % 2}"} for i in range(12)])
    return path


@pytest.fixture(scope="module")
def client(collection: Path, tiny_bi_encoder_dir: Path) -> Iterator:
    from fastapi.testclient import TestClient

    from twostage import Engine
    from twostage.server import ServerConfig, create_app

    app = create_app(
        lambda: Engine.open(collection, model=str(tiny_bi_encoder_dir), reranker=None), ServerConfig(token="t")
    )
    with TestClient(app) as c:
        yield c
    assert app.state.stats.counts["server_errors"] == 0


# JSON has no NaN or infinity: a client cannot send them (httpx refuses to encode them), so the fuzzer does not either
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
search_body = st.fixed_dictionaries(
    {},
    optional={
        "query": st.one_of(st.text(max_size=20), json_value),
        "k": st.one_of(st.integers(-5, 2000), json_value),
        "top_n": st.integers(-2, 200),
        "rerank": json_value,
        "filter": st.one_of(st.dictionaries(st.text(max_size=5), json_value, max_size=2), json_value),
    },
)
doc = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=6), json_value), "text": st.one_of(st.text(max_size=8), json_value)},
    optional={"title": json_value, "metadata": json_value, "extra": json_value},
)


@FUZZ
@given(body=search_body)
def test_search_never_answers_5xx(client, body) -> None:
    reply = client.post("/search", json=body)
    assert reply.status_code < 500 and set(reply.json()) >= ({"hits"} if reply.status_code == 200 else {"error"})


@FUZZ
@given(docs=st.lists(doc, max_size=3), raw=st.binary(max_size=40))
def test_writes_never_answer_5xx_and_the_document_set_is_exact(client, docs, raw) -> None:
    before = client.get("/health").json()["documents"]
    reply = client.post("/documents", json={"documents": docs}, headers={"Authorization": "Bearer t"})
    assert reply.status_code < 500, reply.text
    if reply.status_code == 200:
        for d in docs:
            assert client.get(f"/documents/{d['id']}").json()["id"] == d["id"]
            assert client.delete(f"/documents/{d['id']}", headers={"Authorization": "Bearer t"}).status_code in (
                200,
                404,
            )
    assert client.get("/health").json()["documents"] == before
    garbage = client.post(
        "/documents", content=raw, headers={"Authorization": "Bearer t", "Content-Type": "application/json"}
    )
    assert 400 <= garbage.status_code < 500


def test_small_server_items_in_process(client) -> None:
    # a filter key containing a quote matches what it names
    hits = client.post(
        "/search", json={"query": "rivers", "k": 50, "top_n": 50, "rerank": False, "filter": {'ke"y': "v1"}}
    ).json()["hits"]
    assert sorted(h["doc_id"] for h in hits) == sorted(f"d{i}" for i in range(1, 12, 2))
    # an id that no URL could address again is refused when added
    reply = client.post(
        "/documents", json={"documents": [{"id": "a\nb", "text": "x"}]}, headers={"Authorization": "Bearer t"}
    )
    assert reply.status_code == 422 and "whitespace or a control character" in reply.json()["error"]
    reply = client.post(
        "/documents", json={"documents": [{"id": "z 1", "text": "x"}]}, headers={"Authorization": "Bearer t"}
    )
    assert reply.status_code == 422 and "TREC runs cannot hold" in reply.json()["error"]
    # deep JSON is said to be deep, not "invalid UTF-8"
    reply = client.post(
        "/search", content=b"[" * 100_000 + b"]" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400 and "nested too deeply" in reply.json()["error"], reply.text
    stats = client.get("/stats").json()
    assert "path" not in stats["collection"] and "/" not in json.dumps(stats["collection"].get("extra", {}))
    assert client.head("/health").status_code == 200


# --------------------------------------------------------------------------- twostage serve, a real process
@contextlib.contextmanager
def _serve(collection: Path, tiny: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TWOSTAGE_TOKEN="t")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "twostage.cli",
            "serve",
            str(collection),
            "--port",
            str(port),
            "--no-rerank",
            "--max-connections",
            "16",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    try:
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_limits_hosts_idle_sockets_and_the_access_log(collection: Path, tiny_bi_encoder_dir: Path) -> None:
    with _serve(collection, tiny_bi_encoder_dir) as (url, proc):
        # a body over the limit with a Content-Length is answered 413, not a connection reset
        reply = httpx.post(
            url + "/documents",
            content=b"x" * (9 << 20),
            timeout=60,
            headers={"Content-Type": "application/json", "Authorization": "Bearer t"},
        )
        assert reply.status_code == 413, reply.text
        # a Host this server does not go by is refused (DNS rebinding); its own names are served
        assert httpx.get(url + "/health", headers={"Host": "evil.example"}).status_code == 400
        assert httpx.get(url + "/health", headers={"Host": "localhost"}).status_code == 200
        # 300 idle sockets (more than --max-connections) do not starve /health
        idle = [socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) for _ in range(300)]
        try:
            assert httpx.get(url + "/health", timeout=10).status_code == 200
            assert httpx.post(url + "/search", json={"query": "rivers"}, timeout=30).status_code == 200
        finally:
            for s in idle:
                s.close()
        assert httpx.head(url + "/health").status_code == 200
        httpx.get(url + "/stats?token=SECRET-IN-QUERY")
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    log = out + err  # uvicorn's access log goes to stdout
    assert "SECRET-IN-QUERY" not in log and "/stats?[query redacted]" in log, log[-2000:]
    assert "Traceback" not in log


def test_a_busy_collection_is_503_without_the_holders_details(collection: Path, tiny_bi_encoder_dir: Path) -> None:
    """Another process writing: 503 with Retry-After; the holder's pid, command line and path stay in the server log."""
    from fastapi.testclient import TestClient

    from twostage import Engine
    from twostage.indexes.collection import Collection
    from twostage.indexes.lock import WriterLock
    from twostage.server import ServerConfig, create_app

    app = create_app(
        lambda: Engine.open(collection, model=str(tiny_bi_encoder_dir), reranker=None), ServerConfig(token="t")
    )
    wait, Collection.lock_wait = Collection.lock_wait, 0.2
    try:
        with TestClient(app) as client, WriterLock(collection).holding():
            reply = client.post(
                "/documents", json={"documents": [{"id": "w1", "text": "x"}]}, headers={"Authorization": "Bearer t"}
            )
    finally:
        Collection.lock_wait = wait
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
    assert reply.json()["error"] == "the collection is being changed by another process; try again shortly"
