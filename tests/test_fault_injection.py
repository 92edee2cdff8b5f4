"""The fault-injection campaign as tests: real processes and real files, fixed seeds, exact final document sets.

``kill -9`` at random moments of writes, two writers at once (process + process, process + CLI, process + server),
damaged SQLite and FAISS files, documents behind the index, a read-only directory (a read-only bind mount), a full
disk (a tiny tmpfs) and bad input late in a corpus. Writer processes drive ``Collection`` directly (what ``add``,
``delete`` and the server do beneath the encoder) so that each starts in about a second.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document

DIM = 16
WRITER = r"""
import json, sys, zlib
import numpy as np
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document

def vector(doc_id, tag):
    v = np.random.default_rng(zlib.crc32(f"{doc_id}:{tag}".encode())).standard_normal(16).astype("float32")
    return v / np.linalg.norm(v)

directory, plan = sys.argv[1], json.loads(sys.argv[2])
Collection.lock_wait = plan.get("wait", 60)
with Collection.open(directory) as c:
    for kind, ids in plan["steps"]:
        if kind == "put":
            c.upsert([Document(id=i, text=f"{plan['tag']} {i}") for i in ids], np.stack([vector(i, plan["tag"]) for i in ids]))
        else:
            c.delete(ids)
        c.commit()
        print("ACK", flush=True)
"""


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def _writer(tmp: Path, directory: Path, steps: list, tag: str, wait: float = 60) -> subprocess.Popen:
    script = tmp / "writer.py"
    script.write_text(WRITER)
    plan = json.dumps({"steps": steps, "tag": tag, "wait": wait})
    return subprocess.Popen(
        [sys.executable, str(script), str(directory), plan],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cli(*args: str, process: bool = False) -> subprocess.CompletedProcess:
    """``twostage ARGS`` in a process of its own, or (faster: no imports) through ``main`` in this one."""
    if process:
        return subprocess.run(
            [sys.executable, "-m", "twostage.cli", *args], env=_env(), capture_output=True, text=True, timeout=120
        )
    from twostage.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _new(directory: Path, index_type: str = "flat") -> None:
    Collection.create(directory, model_name="m", model_fingerprint="f", dimension=DIM, index_type=index_type).close()


def _apply(state: set[str], steps: list) -> list[set[str]]:
    """The document set after each step, starting with ``state``."""
    out = [set(state)]
    for kind, ids in steps:
        out.append(out[-1] | set(ids) if kind == "put" else out[-1] - set(ids))
    return out


def _documents(directory: Path) -> set[str]:
    """The final document set, after checking that every document has exactly one live vector and is found."""
    with Collection.open(directory) as c:
        stored, live = c.store.internal_ids(), c.index.ids()
        assert np.array_equal(stored, live), "vector index and documents differ"
        ids = {d.id for d in c.iter_documents()}
        if ids:
            probe = sorted(ids)[:: max(1, len(ids) // 20)]
            for doc_id, vector in zip(probe, c.embeddings_of(probe)):
                assert c.search(vector, 1)[0][0][0] == doc_id, f"{doc_id} is not found by its own vector"
            assert {h for h, _ in c.search(np.ones(DIM, dtype="float32"), len(ids) + 5)[0]} == ids
        return ids


def _no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in (text or ""), text


def _plan(rng: random.Random, prefix: str, steps: int) -> list:
    plan: list = []
    for s in range(steps):
        if s % 4 == 3:
            plan.append(["del", [f"{prefix}{rng.randrange(40 * s)}" for _ in range(10)]])
        else:
            plan.append(
                [
                    "put",
                    [f"{prefix}{40 * s + i}" for i in range(40)]
                    + [f"{prefix}{rng.randrange(40 * s + 1)}" for _ in range(5)],
                ]
            )
            plan[-1][1] = list(dict.fromkeys(plan[-1][1]))
    return plan


# --------------------------------------------------------------------------- kill -9
@pytest.mark.parametrize("index_type", ["flat", "HNSW32"])
def test_kill_9_at_random_moments_loses_no_acknowledged_write(tmp_path: Path, index_type: str) -> None:
    rng = random.Random(12 if index_type == "flat" else 34)
    directory = tmp_path / "c"
    _new(directory, index_type)
    steps = _plan(rng, "d", 14)
    found: set[str] = set()
    for attempt in range(2):  # each run starts again from step 1, on what the killed one left
        states = _apply(found, steps)
        proc = _writer(tmp_path, directory, steps, "v1")
        assert proc.stdout.readline().startswith("ACK")  # running, first step durable
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acked = 1 + out.count("ACK")
        found = _documents(directory)
        # a step is one SQLite transaction: every acknowledged step is there, and at most the one in flight
        assert found in states[acked : acked + 2], f"attempt {attempt}: {acked} steps acknowledged, another state found"
    proc = _writer(tmp_path, directory, steps, "v1")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _documents(directory) == _apply(found, steps)[-1]


# --------------------------------------------------------------------------- two writers
def test_two_writer_processes_replacing_the_same_documents_lose_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    _new(directory)
    base = [["put", [f"d{i}" for i in range(200)]]]
    assert _writer(tmp_path, directory, base, "v0").wait(60) == 0
    # both replace the same 200 documents and add their own, in small committed steps, at the same time
    a = [["put", [f"d{i}" for i in range(s, s + 20)] + [f"a{s}"]] for s in range(0, 200, 20)]
    b = [["put", [f"d{i}" for i in range(s, s + 20)] + [f"b{s}"]] for s in range(0, 200, 20)]
    procs = [_writer(tmp_path, directory, a, "va"), _writer(tmp_path, directory, b, "vb")]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.count("ACK") == 10, err
        _no_traceback(err)
    expected = (
        {f"d{i}" for i in range(200)} | {f"a{s}" for s in range(0, 200, 20)} | {f"b{s}" for s in range(0, 200, 20)}
    )
    assert _documents(directory) == expected


def test_a_second_writer_waits_then_names_the_holder(tmp_path: Path) -> None:
    from twostage.indexes.lock import WriterLock

    directory = tmp_path / "c"
    _new(directory)
    _put(directory, ["x", "y"])
    with WriterLock(directory).holding():
        done = _cli("delete", str(directory), "x", "--wait", "0.3", process=True)
    assert done.returncode == 2 and f"pid {os.getpid()}" in done.stderr and "--wait" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert _documents(directory) == {"x", "y"}
    done = _cli("delete", str(directory), "x", process=True)  # free again: the CLI's delete takes the lock and works
    assert done.returncode == 0, done.stderr
    assert _documents(directory) == {"y"}


def test_server_and_cli_writers_interleave_and_the_server_sees_their_writes(
    tmp_path: Path, tiny_bi_encoder_dir: Path
) -> None:
    from fastapi.testclient import TestClient

    from twostage import Engine
    from twostage.server import ServerConfig, create_app

    directory = tmp_path / "c"
    with Engine.create(directory, model=str(tiny_bi_encoder_dir), reranker=None) as engine:
        engine.add([{"id": f"s{i}", "text": f"seed text {i}"} for i in range(20)])
    corpus = tmp_path / "more.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "text": f"cli text {i}"}) + "\n" for i in range(80)))
    app = create_app(lambda: Engine.open(directory, reranker=None), ServerConfig(token="t"))
    auth = {"Authorization": "Bearer t"}
    with TestClient(app) as client:
        # a real `twostage add` beside the server's own writes: each takes the collection's writer lock in turn
        cli = subprocess.Popen(
            [sys.executable, "-m", "twostage.cli", "add", str(directory), str(corpus), "-q", "--wait", "60"],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        n = 0
        while cli.poll() is None or n < 8:
            reply = client.post(
                "/documents", json={"documents": [{"id": f"h{n}", "text": f"http text {n}"}]}, headers=auth
            )
            assert reply.status_code == 200, reply.text
            n += 1
        out, err = cli.communicate(timeout=120)
        assert cli.returncode == 0 and "80 added" in out, err
        _no_traceback(err)
        delete = _cli("delete", str(directory), "s0", "s1", process=True)
        assert delete.returncode == 0, delete.stderr
        expected = {f"s{i}" for i in range(2, 20)} | {f"h{i}" for i in range(n)} | {f"p{i}" for i in range(80)}
        # the running server answers with the other processes' committed writes, without a restart
        hits = client.post("/search", json={"query": "text", "k": 1000, "top_n": 100, "rerank": False}).json()
        assert hits["candidates"] == len(expected)
        assert client.get("/documents/p79").status_code == 200 and client.get("/documents/s0").status_code == 404
        assert client.get("/health").json()["documents"] == len(expected)
    assert _documents_any_dim(directory) == expected


def _documents_any_dim(directory: Path) -> set[str]:
    with Collection.open(directory) as c:
        assert np.array_equal(c.store.internal_ids(), c.index.ids())
        return {d.id for d in c.iter_documents()}


# --------------------------------------------------------------------------- damaged files
def _put(directory: Path, ids: list[str], seed: int = 0) -> None:
    """Add documents with random unit vectors, in this process (the damage tests need no second one to build)."""
    vectors = np.random.default_rng(seed).standard_normal((len(ids), DIM)).astype("float32")
    with Collection.open(directory) as c:
        for start in range(0, len(ids), 100):
            part = vectors[start : start + 100]
            c.upsert(
                [Document(id=i, text=f"text {i}") for i in ids[start : start + 100]],
                part / np.linalg.norm(part, axis=1, keepdims=True),
            )
            c.commit()


def _collection_of(tmp_path: Path, n: int = 300) -> Path:
    directory = tmp_path / "c"
    _new(directory)
    _put(directory, [f"d{i}" for i in range(n)])
    return directory


def _snapshot(directory: Path) -> dict[str, bytes]:
    """The collection's files (not the lock file, not SQLite's own transient -wal/-shm files)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.name != "writer.lock" and not p.name.endswith(("-wal", "-shm"))
    }


@pytest.mark.parametrize("damage", ["empty", "half", "header", "middle"])
def test_a_damaged_documents_file_is_one_line_and_nothing_is_rewritten(tmp_path: Path, damage: str) -> None:
    directory = _collection_of(tmp_path)
    db = directory / "documents.sqlite"
    data = db.read_bytes()
    if damage == "empty":
        db.write_bytes(b"")
    elif damage == "half":
        db.write_bytes(data[: len(data) // 2])
    elif damage == "header":
        db.write_bytes(b"\0" * 100 + data[100:])
    else:  # 64 KB of garbage in the middle of the file
        middle = len(data) // 2
        db.write_bytes(data[:middle] + random.Random(5).randbytes(65536) + data[middle + 65536 :])
    before = _snapshot(directory)
    for args in (["info", str(directory)], ["delete", str(directory), "d1"], ["check", str(directory)]):
        done = _cli(*args)
        _no_traceback(done.stderr, done.stdout)
        if damage == "middle" and args[0] == "info":
            continue  # SQLite meets the damage only on the pages a command reads; check finds it below
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 or args[0] == "check", done.stderr
    assert _snapshot(directory) == before  # a read rewrote nothing: vectors.faiss and the manifest are as they were
    check = _cli("check", str(directory), "--repair")
    assert check.returncode == 2 and "cannot repair" in check.stdout, check.stdout + check.stderr


def test_documents_behind_the_index_are_refused_then_check_repair_rebuilds(tmp_path: Path) -> None:
    directory = _collection_of(tmp_path, 100)
    old = _snapshot(directory)["documents.sqlite"]
    _put(directory, [f"n{i}" for i in range(50)], seed=1)
    (directory / "documents.sqlite").write_bytes(old)  # an older copy put back
    before = _snapshot(directory)
    done = _cli("info", str(directory))
    assert done.returncode == 2 and "generation" in done.stderr and "check" in done.stderr, done.stderr
    assert _snapshot(directory) == before
    check = _cli("check", str(directory))
    assert check.returncode == 1 and "--repair" in check.stdout, check.stdout + check.stderr
    repair = _cli("check", str(directory), "--repair")
    assert repair.returncode == 0 and "repaired" in repair.stdout, repair.stdout + repair.stderr
    assert _documents(directory) == {f"d{i}" for i in range(100)}
    assert _cli("check", str(directory)).returncode == 0


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_a_damaged_vector_index_is_rebuilt_from_sqlite(tmp_path: Path, damage: str) -> None:
    directory = _collection_of(tmp_path, 200)
    faiss_file = directory / "vectors.faiss"
    if damage == "missing":
        faiss_file.unlink()
    elif damage == "garbage":
        faiss_file.write_bytes(random.Random(1).randbytes(4096))
    else:
        faiss_file.write_bytes(faiss_file.read_bytes()[:1000])
    check = _cli("check", str(directory))
    assert check.returncode == 1 and "vectors.faiss" in check.stdout, check.stdout + check.stderr
    done = _cli("info", str(directory))
    assert done.returncode == 0, done.stderr
    _no_traceback(done.stderr)
    assert _documents(directory) == {f"d{i}" for i in range(200)}


def test_vectors_pointing_at_deleted_rows_are_found_by_content(tmp_path: Path) -> None:
    """Equal generation tags, different ids (what two unlocked writers used to leave): fixed on open, by ids."""
    directory = _collection_of(tmp_path, 100)
    import sqlite3

    with sqlite3.connect(directory / "documents.sqlite") as con:  # move 30 documents to fresh ids behind FAISS's back
        con.execute("UPDATE docs SET internal_id = internal_id + 1000 WHERE internal_id <= 30")
    assert _cli("check", str(directory)).returncode == 1
    assert _documents(directory) == {f"d{i}" for i in range(100)}
    # the lexical table is keyed by the old ids too: only check --repair can re-index it (from the stored texts)
    assert _cli("check", str(directory), "--repair").returncode == 0
    assert _cli("check", str(directory)).returncode == 0


def test_a_manifest_dimension_that_differs_is_one_line(tmp_path: Path) -> None:
    directory = _collection_of(tmp_path, 100)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["dimension"] = 512
    (directory / "manifest.json").write_text(json.dumps(manifest))
    done = _cli("info", str(directory))
    assert done.returncode == 2 and "dimension 512" in done.stderr, done.stderr
    _no_traceback(done.stderr)
    assert _cli("check", str(directory), "--repair").returncode == 0
    assert _documents(directory) == {f"d{i}" for i in range(100)}


@pytest.mark.parametrize("field, value", [("extra", [1]), ("generation", "7"), ("factory", 3)])
def test_a_mistyped_manifest_field_is_one_line(tmp_path: Path, field: str, value) -> None:
    directory = _collection_of(tmp_path, 20)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest[field] = value
    (directory / "manifest.json").write_text(json.dumps(manifest))
    for command in ("info", "check"):  # check reports it among its findings, on stdout
        done = _cli(command, str(directory))
        assert done.returncode == 2 and f"field '{field}' should be" in done.stderr + done.stdout, done
        _no_traceback(done.stderr)


# --------------------------------------------------------------------------- read-only place, full disk
@contextlib.contextmanager
def _mounted(*args: str, target: Path) -> Iterator[None]:
    target.mkdir(exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip() or 'mount failed'}): needs root with CAP_SYS_ADMIN")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_read_only_collection_can_be_searched_but_not_changed(tmp_path: Path) -> None:
    directory = _collection_of(tmp_path, 100)
    view = tmp_path / "ro"
    with _mounted("--bind", "-o", "ro", str(directory), target=view):
        if os.access(view, os.W_OK):
            pytest.skip("the read-only bind mount is writable here")
        info = _cli("info", str(view))
        assert info.returncode == 0 and "document_count" in info.stdout, info.stderr
        script = (
            "import numpy as np; from twostage.indexes.collection import Collection; "
            f"c = Collection.open({str(view)!r}); print(len(c.search(np.ones({DIM}, 'float32'), 500)[0]), "
            "c.read_only)"
        )
        done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=60)
        assert done.stdout.split() == ["100", "True"], done.stderr
        delete = _cli("delete", str(view), "d1")
        assert delete.returncode == 2 and "read-only" in delete.stderr, delete.stderr
        assert len(delete.stderr.strip().splitlines()) == 1
        _no_traceback(info.stderr, done.stderr, delete.stderr)
    assert _documents(directory) == {f"d{i}" for i in range(100)}


def test_a_full_disk_is_one_line_and_keeps_the_last_committed_state(tmp_path: Path, tiny_bi_encoder_dir: Path) -> None:
    from twostage.cli import main

    disk = tmp_path / "disk"
    with _mounted("-t", "tmpfs", "-o", "size=800k", "tmpfs", target=disk):
        directory = disk / "c"
        corpus = tmp_path / "base.jsonl"
        corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"short {i}"}) + "\n" for i in range(50)))
        assert main(["index", str(corpus), "--index", str(directory), "--model", str(tiny_bi_encoder_dir), "-q"]) == 0
        big = tmp_path / "big.jsonl"
        big.write_text(
            "".join(json.dumps({"id": f"b{i}", "text": f"long {i} " + "word " * 2000}) + "\n" for i in range(100))
        )
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["add", str(directory), str(big), "-q"])
        assert code == 2 and "disk is full" in err.getvalue(), err.getvalue()
        assert err.getvalue().count("error:") == 1  # one line (beside the model loader's progress bar)
        _no_traceback(err.getvalue())
        with Collection.open(directory) as c:  # the last committed state: the base documents, whole steps of the rest
            ids = {d.id for d in c.iter_documents()}
            assert ids == {f"d{i}" for i in range(50)}  # the 100 big ones were one step, which failed whole
            assert np.array_equal(c.store.internal_ids(), c.index.ids())


# --------------------------------------------------------------------------- bad input late in the corpus
def _corpus_lines(prefix: str, n: int) -> list[bytes]:
    return [json.dumps({"id": f"{prefix}{i}", "text": f"passage number {i} about rivers"}).encode() for i in range(n)]


@pytest.mark.parametrize(
    "fault", ["malformed line 561", "duplicate id at 560", "invalid UTF-8 at 581", "truncated gzip"]
)
def test_bad_input_late_in_the_corpus_changes_nothing(tmp_path: Path, tiny_bi_encoder_dir: Path, fault: str) -> None:
    from twostage.cli import main

    directory = tmp_path / "c"
    base = tmp_path / "base.jsonl"
    base.write_bytes(b"\n".join(_corpus_lines("d", 20)) + b"\n")
    assert main(["index", str(base), "--index", str(directory), "--model", str(tiny_bi_encoder_dir), "-q"]) == 0
    lines = _corpus_lines("e", 700)
    name = "more.jsonl"
    if fault.startswith("malformed"):
        lines[560] = b'{"id": "x", "text": '
    elif fault.startswith("duplicate"):
        lines[559] = lines[3]
    elif fault.startswith("invalid"):
        lines[580] = lines[580].replace(b"rivers", b"riv\xff\xfers")
    data = b"\n".join(lines) + b"\n"
    if fault == "truncated gzip":
        name, data = "more.jsonl.gz", gzip.compress(data)[:-2000]
    corpus = tmp_path / name
    corpus.write_bytes(data)
    before = _snapshot(directory)
    for args in (
        ["add", str(directory), str(corpus), "-q"],
        ["index", str(corpus), "--index", str(tmp_path / "new"), "--model", str(tiny_bi_encoder_dir), "-q"],
    ):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert main(args) == 2
        assert len(err.getvalue().strip().splitlines()) == 1 and name in err.getvalue(), err.getvalue()
    assert _snapshot(directory) == before
    assert not (tmp_path / "new").exists()  # a failed index into a new directory leaves no directory
    assert _documents_any_dim(directory) == {f"d{i}" for i in range(20)}
