"""``kill -9`` in the middle of ``index``/``add`` leaves a loadable collection; re-running finishes without duplicates."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from twostage.indexes.collection import Collection

N_DOCS = 1500


def _write_corpus(path: Path, prefix: str, n: int) -> None:
    words = "river city music protein galaxy bread election piano glacier vaccine orbit violin harbor".split()
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            text = " ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + f" number {i}"
            out.write(json.dumps({"id": f"{prefix}{i}", "text": text}) + "\n")


def _committed(directory: Path) -> int:
    db = directory / "documents.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from docs").fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_when_committed(args: list[str], directory: Path, at_least: int) -> int:
    """Start ``twostage ARGS``, SIGKILL it once ``at_least`` documents are committed, return the count then."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "twostage.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and _committed(directory) < at_least:
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return _committed(directory)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "twostage.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def _assert_consistent(directory: Path, expected: int) -> None:
    with Collection.open(directory) as collection:
        assert len(collection) == expected
        stats = collection.stats()
        assert stats["document_count"] == stats["vector_count"] == expected
        import numpy as np

        hits = collection.search(np.ones((1, stats["dimension"]), dtype="float32"), expected + 10)[0]
        ids = [doc_id for doc_id, _ in hits]
        assert len(ids) == len(set(ids)) == expected


def test_kill_during_index_then_rerun(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    _write_corpus(corpus, "d", N_DOCS)
    directory = tmp_path / "coll"
    committed = _kill_when_committed(["index", str(corpus), "--index", str(directory), "--quiet"], directory, 256)
    assert 0 < committed < N_DOCS
    _assert_consistent(directory, committed)  # loadable at its last committed state
    done = _run(["index", str(corpus), "--index", str(directory), "--quiet"])
    assert done.returncode == 0, done.stderr
    _assert_consistent(directory, N_DOCS)  # finished, no duplicates


def test_kill_during_add_then_rerun(tmp_path):
    base, extra = tmp_path / "base.jsonl", tmp_path / "extra.jsonl"
    _write_corpus(base, "b", 300)
    _write_corpus(extra, "e", N_DOCS)
    directory = tmp_path / "coll"
    assert _run(["index", str(base), "--index", str(directory), "--quiet"]).returncode == 0
    committed = _kill_when_committed(["add", str(directory), str(extra), "--quiet"], directory, 300 + 256)
    assert 300 < committed < 300 + N_DOCS
    _assert_consistent(directory, committed)
    done = _run(["add", str(directory), str(extra), "--quiet"])
    assert done.returncode == 0, done.stderr
    _assert_consistent(directory, 300 + N_DOCS)
