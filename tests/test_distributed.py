"""Ray for real: a head and a worker node started with ``ray start`` on 127.0.0.1, indexing across them, searching
through shard actors and reranker replicas, and a worker node killed mid-indexing."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal

import pytest
from ray_cluster import LocalRayCluster, new_auth_env

if importlib.util.find_spec("ray") is None:
    pytest.skip("Ray is not installed (pip install 'twostage[ray]')", allow_module_level=True)
#: read by ray when it is imported, so set before that: endpoints on 127.0.0.1, and this cluster's own auth token
DRIVER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **new_auth_env()}
SAVED_ENV = {name: os.environ.get(name) for name in DRIVER_ENV}
os.environ.update(DRIVER_ENV)

from test_sharded import assert_same_hits, corpus, queries, twostage  # noqa: E402

from twostage.engine import Engine  # noqa: E402
from twostage.indexes.sharded import open_collection, shard_of  # noqa: E402
from twostage.runtime.config import RuntimeConfig  # noqa: E402

SHARDS = 4
#: no test here may run longer than this (a hung cluster fails the test instead of the CI job)
TEST_SECONDS = 240


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise TimeoutError in this (the main) thread once ``seconds`` have passed: a hung cluster fails a test instead
    of the CI job."""

    def expire(*_):
        raise TimeoutError(f"ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def time_limit():
    with deadline(TEST_SECONDS):
        yield


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + one worker node (1 CPU), on 127.0.0.1 in a private temp dir; everything ended afterwards."""
    import ray

    nodes = LocalRayCluster(auth_env={k: v for k, v in DRIVER_ENV.items() if k.startswith("RAY_AUTH")})
    try:
        with deadline(120):
            nodes.start_head()
            nodes.add_worker()
    except (RuntimeError, OSError, TimeoutError) as err:
        nodes.stop()
        pytest.skip(f"a local Ray cluster cannot start here: {err}")
    yield nodes
    ray.shutdown()
    nodes.stop()
    for name, value in SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bi_encoder_dir):
    """300 passages as one collection, built without Ray, and the corpus file they came from."""
    root = tmp_path_factory.mktemp("ray-ref")
    docs = corpus(300, seed=7)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    with Engine.create(
        root / "one", model=str(tiny_bi_encoder_dir), reranker=None, index_type="flat", store_tokens="int8"
    ) as engine:
        engine.add(docs)
    return root, docs


@pytest.fixture(scope="module")
def ray_built(cluster, reference, tiny_bi_encoder_dir):
    """The same corpus indexed by ``twostage index --shards 4 --ray`` on 2 encoder actors, one per node."""
    root, _ = reference
    with deadline(TEST_SECONDS):  # module fixtures run before the per-test limit: bound this one too
        code, out, err = twostage(
            "index",
            str(root / "corpus.jsonl"),
            "-i",
            str(root / "ray4"),
            "--model",
            str(tiny_bi_encoder_dir),
            "--index-type",
            "flat",
            "--store-tokens",
            "int8",
            "--shards",
            "4",
            "--ray",
            cluster.address,
            "--actors",
            "2",
            "--device",
            "cpu",
            "-q",
        )
    assert code == 0, err
    assert "300 added" in out and "4 shards" in out
    return root / "ray4"


def test_cluster_has_two_nodes_on_loopback(cluster, ray_built):
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) >= 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}


@pytest.mark.parametrize("reranker", [None, "maxsim", "tiny-cross-encoder"])
def test_search_through_shard_actors_equals_one_collection(
    cluster, reference, ray_built, reranker, tiny_cross_encoder_dir
):
    from twostage.distributed import open_ray_engine

    root, _ = reference
    spec = str(tiny_cross_encoder_dir) if reranker == "tiny-cross-encoder" else reranker
    rerank = spec is not None
    with (
        Engine.open(root / "one", reranker=spec) as one,
        open_ray_engine(
            ray_built, address=cluster.address, reranker=spec, replicas=2, runtime=RuntimeConfig(device="cpu")
        ) as served,
    ):
        for k in (30, 300):
            assert_same_hits(
                one.search_many(queries(), k=k, top_n=k, rerank=rerank),
                served.search_many(queries(), k=k, top_n=k, rerank=rerank),
                reranked=rerank,
            )


def test_writes_through_ray_reach_the_owning_shard(cluster, ray_built, tiny_bi_encoder_dir, tmp_path):
    import shutil

    from twostage.distributed import open_ray_engine
    from twostage.indexes import intent

    copy = tmp_path / "copy"
    shutil.copytree(ray_built, copy)
    # a sharded delete another writer was killed in: the first write through the actors finishes it
    interrupted = ["p00005", "p00006", "p00007"]
    intent.begin(copy, intent.Intent("delete", {"ids": interrupted}, SHARDS, done=[]))
    with open_ray_engine(
        copy, address=cluster.address, reranker=None, replicas=1, runtime=RuntimeConfig(device="cpu")
    ) as served:
        served.add([{"id": "new-doc", "text": "a museum island in the river of berlin"}])
        assert not (copy / intent.INTENT).exists()
        assert served.delete(["p00003", "p00004", "missing"]).missing == ["missing"]
        assert served.search("a museum island in the river of berlin", k=5, rerank=False).hits[0].doc_id == "new-doc"
        assert served.info()["document_count"] == 296
    assert not (copy / intent.INTENT).exists() and not (copy / intent.SPOOL).exists()
    with open_collection(copy) as collection:
        assert collection.shards[shard_of("new-doc", SHARDS)].get(["new-doc"])[0] is not None
        assert collection.get(["p00003", "p00004", *interrupted]) == [None] * 5 and len(collection) == 296


def test_killed_worker_node_loses_nothing(cluster, reference, tiny_bi_encoder_dir, tmp_path):
    """A third node joins; once it holds an encoder actor and some batches are written, it is SIGKILLed. The same run
    finishes on the surviving nodes with every document exactly once."""
    from twostage.distributed import index_distributed

    cluster.add_worker(resources='{"victim": 1}')
    docs = corpus(1500, seed=11)
    killed = {"written": 0, "processes": 0}

    def progress(n: int) -> None:
        killed["written"] += n
        names = [p.name() for p in cluster.node_processes("victim")]
        if not killed["processes"] and killed["written"] >= 100 and any("MapWorker" in n for n in names):
            killed["processes"] = cluster.kill_node("victim")
            killed["at"] = killed["written"]

    report, size = index_distributed(
        docs,
        tmp_path / "k",
        address=cluster.address,
        shards=SHARDS,
        actors=3,
        model=str(tiny_bi_encoder_dir),
        index_type="flat",
        runtime=RuntimeConfig(device="cpu", batch_size=16),
        progress=progress,
    )
    assert killed["processes"] > 0 and killed["at"] < len(docs), killed
    assert size == len(docs) and report.added == len(docs)
    with open_collection(tmp_path / "k") as collection:
        stored = [doc.id for doc in collection.iter_documents()]
        assert len(stored) == len(set(stored)) == len(docs)
        assert sum(len(shard.index) for shard in collection.shards) == len(docs)
    report, size = index_distributed(
        docs,
        tmp_path / "k",
        address=cluster.address,
        shards=SHARDS,
        actors=2,
        model=str(tiny_bi_encoder_dir),
        index_type="flat",
        runtime=RuntimeConfig(device="cpu"),
    )
    assert (report.unchanged, report.added, size) == (len(docs), 0, len(docs))


def test_an_address_where_no_cluster_listens_is_refused_in_seconds(tmp_path, tiny_bi_encoder_dir):
    """Ray's own connect retries for minutes against a closed port; --ray HOST:PORT is checked first (one line, exit 2)."""
    import subprocess
    import sys
    import time

    source, directory = tmp_path / "corpus.jsonl", tmp_path / "s"
    source.write_text("".join(json.dumps(doc) + "\n" for doc in corpus(30)), encoding="utf-8")
    assert (
        twostage(
            "index", str(source), "--index", str(directory), "--shards", "2", "--model", str(tiny_bi_encoder_dir), "-q"
        )[0]
        == 0
    )
    started = time.monotonic()  # a process of its own: this one may already be joined to the tests' cluster
    done = subprocess.run(
        [sys.executable, "-m", "twostage.cli", "search", str(directory), "berlin", "--ray", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    code, err = done.returncode, done.stderr
    assert code == 2 and err.startswith("twostage search: error: --ray 127.0.0.1:1: cannot reach a Ray cluster there")
    assert time.monotonic() - started < 30 and len(err.splitlines()) == 1
