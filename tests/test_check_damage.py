"""``check`` never calls whole a collection that another command refuses: each damage below is found (exit 1 or 2);
``--repair`` either fixes it (then the collection opens, searches, reads its tokens and checks whole) or says what it
cannot fix and exits 2; reading a damaged collection is one line (a CollectionError), never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.errors import CollectionError

DIM = 16


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 documents with 2bit tokens (a learned codec), a lexical index and metadata."""
    path = tmp_path_factory.mktemp("damage") / "c"
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((100, DIM)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Collection.create(path, model_name="m", model_fingerprint="ab" * 32, dimension=DIM, store_tokens="2bit") as c:
        c.upsert(
            [Document(id=f"d{i}", text=f"river {i}", metadata={"n": i}) for i in range(100)],
            vectors,
            tokens=[rng.standard_normal((32, DIM)).astype("float32") for _ in range(100)],
        )
        c.commit()
        c.convert_tokens("2bit")  # 1,280 pooled tokens: a collection this small keeps int8 rows until told
    return path


def _sql(path: Path, statement: str) -> None:
    con = sqlite3.connect(path / "documents.sqlite")
    con.execute(statement)
    con.commit()
    con.close()


def _zero_fingerprint(path: Path) -> None:
    data = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**data, "model_fingerprint": "0" * 64}))


def _faiss_directory(path: Path) -> None:
    (path / "vectors.faiss").unlink()
    (path / "vectors.faiss").mkdir()


DAMAGES = {
    "token encoding 'bogus' in meta": lambda p: _sql(
        p, "UPDATE meta SET value = '\"bogus\"' WHERE key = 'token_encoding'"
    ),
    "a meta value that is not JSON": lambda p: _sql(p, "UPDATE meta SET value = 'bogus' WHERE key = 'token_encoding'"),
    "a row whose metadata is not JSON": lambda p: _sql(p, "UPDATE docs SET metadata = '{not json' WHERE doc_id = 'd3'"),
    "a 2-byte embedding blob": lambda p: _sql(p, "UPDATE docs SET embedding = x'0102' WHERE doc_id = 'd3'"),
    "the token_codec table dropped": lambda p: _sql(p, "DROP TABLE token_codec"),
    "the lexical table dropped": lambda p: _sql(p, "DROP TABLE lexical"),
    "a zeroed model fingerprint": _zero_fingerprint,
    "vectors.faiss made a directory": _faiss_directory,
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    from twostage.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _use(path: Path) -> None:
    """What search does beneath the model: open, dense and BM25 search, fetch documents, read their tokens."""
    with Collection.open(path) as c:
        assert c.manifest.model_fingerprint == "ab" * 32, "every search would refuse this model"
        query = np.ones(DIM, dtype="float32") / np.sqrt(DIM)
        ids = [doc_id for doc_id, _ in c.search(query, 100)[0]]
        assert len(ids) == 100 and len(c.lexical_search(["river"], 100)[0]) == 100
        assert all(d is not None for d in c.get(ids)) and len(c.embeddings_of(ids)) == 100
        assert all(t is not None for t in c.token_store.get_many(ids))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_check_finds_what_a_read_refuses_and_repair_fixes_it_or_says_why_not(
    tmp_path: Path, base: Path, damage: str
) -> None:
    path = tmp_path / "c"
    shutil.copytree(base, path)
    DAMAGES[damage](path)
    check = _cli("check", str(path))
    assert check.returncode in (1, 2) and "problem:" in check.stdout, check.stdout
    assert "Traceback" not in check.stderr
    try:
        _use(path)
    except (CollectionError, AssertionError) as err:  # refused in one line (or the model would be): fine
        assert "\n" not in str(err).strip() or isinstance(err, AssertionError)
    repair = _cli("check", str(path), "--repair")
    assert "Traceback" not in repair.stderr
    if repair.returncode == 0:
        assert "repaired:" in repair.stdout, repair.stdout
        _use(path)
        assert _cli("check", str(path)).returncode == 0
    else:
        assert repair.returncode == 2 and "cannot repair:" in repair.stdout, repair.stdout
        assert _cli("check", str(path)).returncode == 2


def test_an_open_for_reading_leaves_every_file_as_it_was(tmp_path: Path, base: Path) -> None:
    path = tmp_path / "c"
    shutil.copytree(base, path)
    c = Collection.open(path)  # a writer that dies after its SQLite commit leaves SQLite ahead of the index
    c.delete(["d1", "d2"])
    c.store._con.close()
    c._writer.release()
    c._closed = True
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()}
    with Collection.open(path) as c:
        assert c.recovered and len(c.search(np.ones(DIM, dtype="float32"), 200)[0]) == 98
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()} == before
