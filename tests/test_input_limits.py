"""Input limits of the corpus readers (``indexes/limits.py``): one line naming file, line and field, exit 2, never a
``RecursionError``; and a read-only collection refused before the corpus is read or a model loads."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from twostage.indexes.errors import CorpusError
from twostage.indexes.limits import MAX_NESTING, MAX_TITLE_CHARS, deep_field, nesting
from twostage.indexes.readers import validate_corpus


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("name", "line", "message"),
    [
        (
            "deep.jsonl",
            '{"id": "b", "text": "x", "tags": ' + _nested(100_000) + "}",
            "line 2, field 'tags': JSON nested",
        ),
        ("deep40.jsonl", '{"id": "b", "text": "x", "tags": ' + _nested(MAX_NESTING + 8) + "}", "field 'tags': nests"),
        ("meta.jsonl", '{"id": "b", "text": "x", "metadata": {"a": ' + _nested(50) + "}}", "field 'a': nests deeper"),
        ("title.jsonl", json.dumps({"id": "b", "text": "x", "title": "t" * (MAX_TITLE_CHARS + 1)}), "field 'title'"),
        ("id.jsonl", json.dumps({"id": "b" * 1001, "text": "x"}), "field 'id': 1,001 characters"),
        ("big.jsonl", json.dumps({"id": "b", "text": "x", "notes": ["n" * 1000] * 1001}), "field 'notes': longer"),
    ],
)
def test_a_record_past_a_limit_is_one_line_naming_file_line_and_field(tmp_path: Path, name, line, message) -> None:
    corpus = tmp_path / name
    corpus.write_text(json.dumps({"id": "a", "text": "fine", "title": "t"}) + "\n" + line + "\n")
    with pytest.raises(CorpusError) as caught:
        validate_corpus(corpus)
    assert message in str(caught.value) and name in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_json_array_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "deep.json"
    corpus.write_text('[{"id": "b", "text": "x", "tags": ' + _nested(100_000) + "}]")
    with pytest.raises(CorpusError, match="deep.json: JSON nested too deeply"):
        validate_corpus(corpus)


def test_metadata_within_the_limits_is_kept(tmp_path: Path) -> None:
    corpus = tmp_path / "ok.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "x", "tags": json.loads(_nested(MAX_NESTING))}) + "\n")
    assert validate_corpus(corpus) == 1
    assert nesting(json.loads(_nested(MAX_NESTING))) == MAX_NESTING
    assert deep_field('{"a": 1, "b": "[[", "c": ' + _nested(40) + "}") == "c"


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path: Path) -> None:
    from twostage.cli import main

    corpus = tmp_path / "deep.jsonl"
    corpus.write_text('{"id": "b", "text": "x", "tags": ' + _nested(100_000) + "}\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["index", str(corpus), "--index", str(tmp_path / "c"), "--model", "no-such-model", "-q"])
    assert code == 2 and "nested too deeply" in err.getvalue() and "Traceback" not in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_add_on_a_read_only_collection_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    """The collection names a model that cannot load: a refusal that mentions it would have tried."""
    from twostage.cli import main
    from twostage.indexes.sharded import ShardedCollection

    path = tmp_path / "s"
    ShardedCollection.create(path, shards=2, model_name="no-such-model", model_fingerprint="f", dimension=8).close()
    view = tmp_path / "ro"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount here ({mounted.stderr.strip()}): needs root with CAP_SYS_ADMIN")
    try:
        if os.access(view, os.W_OK):
            pytest.skip("the read-only bind mount is writable here")
        corpus = tmp_path / "c.jsonl"
        corpus.write_text(json.dumps({"id": "a", "text": "x"}) + "\n")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["add", str(view), str(corpus), "-q"])
        assert code == 2 and "read-only" in err.getvalue() and "no-such-model" not in err.getvalue(), err.getvalue()
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)
