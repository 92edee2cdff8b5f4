"""The sharded part of the fault campaign (``tests/test_fault_injection.py`` holds the single-collection part; one file
would pass 500 lines): ``kill -9`` at random moments of a sharded ``delete``, ``tokens --convert`` and add, on real
processes and files; damaged sharded collections that ``check`` must refuse; a search after a write hit a full disk.

Each kill must leave the collection as before, as after, or with an intent record that running the same command
again finishes; the re-run then must end exactly in the after state, and ``check`` must call it whole.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from twostage.indexes import intent
from twostage.indexes.documents import Document
from twostage.indexes.sharded import ShardedCollection, open_collection

DIM = 16
SHARDS = 3
DOCS = 2400
#: kills per operation; three operations give 24 random points
KILLS = 8
#: the add writer: what ``Engine.add`` does beneath the encoder (chunks of 64 upserted, one commit at the end)
ADDER = r"""
import sys, zlib
import numpy as np
from twostage.indexes.documents import Document
from twostage.indexes.sharded import ShardedCollection

def vector(doc_id):
    v = np.random.default_rng(zlib.crc32(doc_id.encode())).standard_normal(16).astype("float32")
    return v / np.linalg.norm(v)

ids = [f"n{i}" for i in range(int(sys.argv[2]))]
print("READY", flush=True)
with ShardedCollection.open(sys.argv[1]) as c:
    for start in range(0, len(ids), 64):
        chunk = ids[start : start + 64]
        c.upsert([Document(id=i, text=f"new {i}") for i in chunk], np.stack([vector(i) for i in chunk]),
                 tokens=[np.ones((8, 16), "float32") for _ in chunk])
"""
#: the CLI itself, imports done before READY so that the kill lands in the command's own work
CLI = r"""
import sys
import twostage.cli, twostage.indexes.sharded, twostage.indexes.check_sharded
print("READY", flush=True)
sys.exit(twostage.cli.main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def _cli(*args: str) -> subprocess.CompletedProcess:
    from twostage.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,400 documents in 3 shards, each with 32 float16 token vectors (enough work for a conversion to be cut)."""
    path = tmp_path_factory.mktemp("sharded") / "s"
    rng = np.random.default_rng(7)
    with ShardedCollection.create(
        path, shards=SHARDS, model_name="m", model_fingerprint="f", dimension=DIM, store_tokens="float16"
    ) as c:
        vectors = rng.standard_normal((DOCS, DIM)).astype("float32")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        tokens = [rng.standard_normal((32, DIM)).astype("float32") for _ in range(DOCS)]
        c.upsert([Document(id=f"d{i}", text=f"text {i}") for i in range(DOCS)], vectors, tokens=tokens)
    return path


def _state(path: Path) -> tuple[frozenset[str], tuple[str, ...]]:
    """The document ids and each shard's token encoding, after checking every shard's index against its documents."""
    with open_collection(path) as c:
        for shard in c.shards:
            assert np.array_equal(shard.store.internal_ids(), shard.index.ids()), f"{shard.path}: index differs"
        return frozenset(d.id for d in c.iter_documents()), tuple(s.token_store.encoding for s in c.shards)


def _script(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _run(script: Path, *args: str) -> tuple[float, int]:
    """Run ``script`` to its end; the seconds from READY to exit (what a kill may interrupt) and its status."""
    proc = subprocess.Popen([sys.executable, str(script), *args], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    started = time.monotonic()
    proc.communicate(timeout=120)
    return time.monotonic() - started, proc.returncode


def _kill(script: Path, delay: float, *args: str) -> None:
    proc = subprocess.Popen([sys.executable, str(script), *args], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


@pytest.mark.parametrize("operation", ["delete", "convert", "add"])
def test_kill_9_at_random_points_of_a_sharded_write(tmp_path: Path, base: Path, operation: str) -> None:
    if operation == "add":
        script, args = _script(tmp_path, "add.py", ADDER), ["{path}", "300"]
    else:
        script = _script(tmp_path, "cli.py", CLI)
        command = ["delete", "{path}", *(f"d{i}" for i in range(0, DOCS, 2))]
        args = command if operation == "delete" else ["tokens", "{path}", "--convert", "int8"]
    before = _state(base)
    whole = tmp_path / "whole"
    shutil.copytree(base, whole)
    seconds, code = _run(script, *(a.format(path=whole) for a in args))
    assert code == 0
    after = _state(whole)
    assert after != before
    outcomes = []
    for seed in range(KILLS):
        rng = random.Random(f"{operation}-{seed}")
        path = tmp_path / f"kill-{seed}"
        shutil.copytree(base, path)
        _kill(script, rng.uniform(0.0, seconds * 1.1), *(a.format(path=path) for a in args))
        state, pending = _state(path), (path / intent.INTENT).exists()
        if operation == "add" and not pending:  # each chunk lands in every shard or none: a prefix of whole chunks
            added = sorted(int(d[1:]) for d in state[0] if d.startswith("n"))
            assert added == list(range(len(added))) and len(added) % 64 in (0, 300 % 64), added[-5:]
        else:
            assert state in (before, after) or pending, f"seed {seed}: a half-done write without a record"
        outcomes.append("before" if state == before else "after" if state == after else "pending")
        if operation == "add":
            _, code = _run(script, *(a.format(path=path) for a in args))
            assert code == 0
        else:
            again = _cli(*(a.format(path=path) for a in args))
            # a delete that had finished says its ids are gone; any other re-run finishes the write
            assert again.returncode == 0 or (state == after and "nothing deleted" in again.stderr), again.stderr
        assert _state(path) == after, f"seed {seed}: re-running did not end in the after state"
        assert not (path / intent.INTENT).exists() and not (path / intent.SPOOL).exists()
        done = _cli("check", str(path))
        assert done.returncode == 0, done.stdout
        shutil.rmtree(path)
    print(operation, "kills left the collection:", ", ".join(outcomes))


# --------------------------------------------------------------------------- damaged sharded collections
def _damage(path: Path, damage: str) -> None:
    if damage == "shard folder deleted":
        shutil.rmtree(path / "shard-001")
    elif damage == "random bytes in shards.json":
        (path / "shards.json").write_bytes(random.Random(3).randbytes(200))
    elif damage == "mistyped shard_count":
        data = json.loads((path / "shards.json").read_text())
        (path / "shards.json").write_text(json.dumps({**data, "shard_count": "3"}))
    elif damage == "fewer shards in shards.json":
        data = json.loads((path / "shards.json").read_text())
        (path / "shards.json").write_text(json.dumps({**data, "shard_count": 2}))
    elif damage == "zeroed fingerprint":
        manifest = path / "shard-002" / "manifest.json"
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "model_fingerprint": "0" * 64}))
    elif damage == "shards in different token encodings":
        with open_collection(path / "shard-000") as shard:
            shard.convert_tokens("int8")
    elif damage == "two shard folders swapped":
        (path / "shard-000").rename(path / "swap")
        (path / "shard-001").rename(path / "shard-000")
        (path / "swap").rename(path / "shard-001")
    elif damage == "a damaged intent record":
        (path / intent.INTENT).write_text("{}")


DAMAGES = [
    "shard folder deleted",
    "random bytes in shards.json",
    "mistyped shard_count",
    "fewer shards in shards.json",
    "zeroed fingerprint",
    "shards in different token encodings",
    "two shard folders swapped",
    "a damaged intent record",
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_check_refuses_a_damaged_sharded_collection_and_repair_says_why_not(
    tmp_path: Path, base: Path, damage: str
) -> None:
    path = tmp_path / "s"
    shutil.copytree(base, path)
    _damage(path, damage)
    for args in (["check", str(path)], ["check", str(path), "--json"]):
        done = _cli(*args)
        assert done.returncode != 0, f"{args}: {done.stdout}"
        assert "Traceback" not in done.stderr
    repair = _cli("check", str(path), "--repair")
    assert "Traceback" not in repair.stderr
    if damage == "zeroed fingerprint":  # the shard's SQLite file recorded the real one: repaired from it
        assert repair.returncode == 0 and "fingerprint restored" in repair.stdout, repair.stdout
        assert _cli("check", str(path)).returncode == 0
    else:  # said, and not 0
        assert repair.returncode == 2 and "cannot repair:" in repair.stdout, repair.stdout


# --------------------------------------------------------------------------- a full disk, then a read
@contextlib.contextmanager
def _tmpfs(target: Path, size: str):
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root with CAP_SYS_ADMIN")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_search_works_after_a_write_hit_a_full_disk(tmp_path: Path, tiny_bi_encoder_dir: Path) -> None:
    from twostage.indexes.collection import Collection
    from twostage.runtime.models import model_fingerprint

    disk = tmp_path / "disk"
    with _tmpfs(disk, "3m"):
        path = disk / "c"
        dimension = json.loads((tiny_bi_encoder_dir / "config.json").read_text())["hidden_size"]
        vectors = np.random.default_rng(0).standard_normal((4000, dimension)).astype("float32")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with Collection.create(
            path,
            model_name=str(tiny_bi_encoder_dir),
            model_fingerprint=model_fingerprint(tiny_bi_encoder_dir),
            dimension=dimension,
            index_type="flat",
        ) as c:
            c.upsert([Document(id=f"d{i}", text=f"rivers {i}") for i in range(4000)], vectors)
        index_bytes = (path / "vectors.faiss").stat().st_size
        stats = os.statvfs(disk)
        filler = disk / "filler"
        with open(filler, "wb") as fh:  # leave room for SQLite's few pages, not for a new vectors.faiss
            fh.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - index_bytes // 2))
        delete = _cli("delete", str(path), *(f"d{i}" for i in range(100)))
        assert delete.returncode == 2 and "No space left on device" in delete.stderr, delete.stderr
        assert len(delete.stderr.strip().splitlines()) == 1
        with Collection.open(path) as c:  # the deletes were committed; the index on disk is stale
            assert len(c) == 3900 and c.recovered
        search = subprocess.run(
            [sys.executable, "-m", "twostage.cli", "search", str(path), "rivers 5", "--no-rerank", "--json"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert search.returncode == 0, search.stderr
        assert "Traceback" not in search.stderr
        check = _cli("check", str(path))
        assert check.returncode == 1, check.stdout  # stale, and --repair can rebuild it
        filler.unlink()
        assert _cli("check", str(path), "--repair").returncode == 0
        assert _cli("check", str(path)).returncode == 0
        with Collection.open(path) as c:
            assert len(c) == 3900 and not c.recovered
