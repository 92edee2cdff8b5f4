"""The intent record of sharded writes (``indexes.intent``), in process: a write that stops between two shards is
finished by the next writer, by ``check --repair``, or by running the same command again."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest

from twostage.indexes import intent
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.sharded import ShardedCollection, open_collection

DIM = 16


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype("float32")
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _sharded(path: Path, n: int = 40, tokens: str | bool = False) -> Path:
    with ShardedCollection.create(
        path, shards=3, model_name="m", model_fingerprint="f", dimension=DIM, store_tokens=tokens
    ) as c:
        docs = [Document(id=f"d{i}", text=f"text {i}") for i in range(n)]
        token_arrays = [np.random.default_rng(i).standard_normal((4, DIM)).astype("float32") for i in range(n)]
        c.upsert(docs, _vectors(n), tokens=token_arrays if tokens else None)
    return path


def _ids(path: Path) -> set[str]:
    with open_collection(path) as c:
        return {d.id for d in c.iter_documents()}


class Killed(BaseException):
    """Stands for kill -9 between two shards (a BaseException, as a signal would not be caught either)."""


def _die_after(monkeypatch: pytest.MonkeyPatch, shards: int) -> None:
    """The running write stops for good once ``shards`` shards have committed it (its record stays)."""
    real = intent.mark_done

    def mark(root: Path, record: intent.Intent, shard: int) -> None:
        real(root, record, shard)
        if len(record.done) >= shards:
            raise Killed

    monkeypatch.setattr(intent, "mark_done", mark)


def _abandon(c: ShardedCollection) -> None:
    """Drop a collection as a killed process would: no commit, locks let go by the OS."""
    c._root_lock.release()
    for shard in c.shards:
        shard._writer.release()
        shard._writer.release()
        shard.store._con.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    from twostage.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_an_interrupted_delete_is_finished_by_running_it_again(tmp_path, monkeypatch):
    path = _sharded(tmp_path / "s")
    ids = [f"d{i}" for i in range(0, 40, 2)]
    c = ShardedCollection.open(path)
    _die_after(monkeypatch, 1)
    with pytest.raises(Killed):
        c.delete(ids)
    _abandon(c)
    monkeypatch.undo()
    assert (path / intent.INTENT).exists()
    partly = _ids(path)
    assert set(ids) & partly and set(ids) - partly, "the delete stopped after one shard"
    done = _cli("delete", str(path), *ids)
    assert done.returncode == 0, done.stderr
    assert _ids(path) == {f"d{i}" for i in range(1, 40, 2)}
    assert not (path / intent.INTENT).exists()
    assert _cli("check", str(path)).returncode == 0


def test_an_interrupted_add_is_rolled_forward_from_its_spool_by_the_next_writer(tmp_path, monkeypatch):
    path = _sharded(tmp_path / "s")
    c = ShardedCollection.open(path)
    new = [Document(id=f"n{i}", text=f"new {i}") for i in range(30)]
    _die_after(monkeypatch, 1)
    with pytest.raises(Killed):
        c.upsert(new, _vectors(30, seed=1))
    _abandon(c)
    monkeypatch.undo()
    assert (path / intent.SPOOL).exists()
    check = _cli("check", str(path))
    assert check.returncode == 1 and "an interrupted write: an add of 30" in check.stdout, check.stdout
    assert "interrupted_write  an add of 30 document(s), finished in 1 of 3" in _cli("info", str(path)).stdout
    with ShardedCollection.open(path) as c:  # any write finishes it first
        c.delete(["d0"])
        assert c.finished is not None and c.finished.operation == "upsert"
    assert _ids(path) == {f"d{i}" for i in range(1, 40)} | {f"n{i}" for i in range(30)}
    assert not (path / intent.INTENT).exists() and not (path / intent.SPOOL).exists()
    with open_collection(path) as c:
        found = c.search(_vectors(30, seed=1)[:5], 1)
        assert [hits[0][0] for hits in found] == [f"n{i}" for i in range(5)]


def test_an_interrupted_conversion_fails_check_and_is_finished_by_repair(tmp_path, monkeypatch):
    path = _sharded(tmp_path / "s", tokens="float16")
    c = ShardedCollection.open(path)
    _die_after(monkeypatch, 1)
    with pytest.raises(Killed):
        c.convert_tokens("int8")
    _abandon(c)
    monkeypatch.undo()
    check = _cli("check", str(path))
    assert check.returncode == 1 and "token conversion to int8" in check.stdout, check.stdout
    repair = _cli("check", str(path), "--repair")
    assert repair.returncode == 0, repair.stdout
    with open_collection(path) as c:
        assert {s.token_store.encoding for s in c.shards} == {"int8"}
    assert _cli("check", str(path)).returncode == 0


def test_an_open_for_reading_writes_nothing_and_the_next_writer_saves_the_index(tmp_path):
    path = tmp_path / "c"
    with Collection.create(path, model_name="m", model_fingerprint="f", dimension=DIM) as c:
        c.upsert([Document(id=f"d{i}", text="t") for i in range(10)], _vectors(10))
    (path / "vectors.faiss").unlink()
    (path / "vectors.faiss").mkdir()  # not even a file any more
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    with Collection.open(path) as c:
        assert c.recovered and len(c.search(_vectors(1), 20)[0]) == 10
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert _cli("check", str(path)).returncode == 1
    assert _cli("check", str(path), "--repair").returncode == 0
    with Collection.open(path) as c:
        assert not c.recovered and len(c) == 10


def test_overwriting_a_sharded_collection_drops_its_interrupted_write(tmp_path, monkeypatch):
    path = _sharded(tmp_path / "s")
    c = ShardedCollection.open(path)
    _die_after(monkeypatch, 1)
    with pytest.raises(Killed):
        c.delete(["d1", "d2", "d3", "d4", "d5", "d6"])
    _abandon(c)
    monkeypatch.undo()
    ShardedCollection.create(
        path, shards=3, overwrite=True, model_name="m", model_fingerprint="f", dimension=DIM
    ).close()
    assert not (path / intent.INTENT).exists() and _ids(path) == set()
