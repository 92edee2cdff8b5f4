"""Optional dependencies (runtime/optional.py): a feature whose extra is not installed stops with one line that names
the extra to install, and the CLI exits 2 with it. The missing module is simulated with ``sys.modules[name] = None``
(how Python itself marks a module that must not be imported)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twostage.cli import main
from twostage.runtime.optional import MissingExtra, available, require


def twostage(*args: str) -> tuple[int, str]:
    """The CLI in this process: exit status and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_require_imports_what_is_there():
    assert require("json", "none", "anything").dumps([1]) == "[1]"
    assert available("json") and not available("no_such_module_here")


def test_require_names_the_feature_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # an earlier test may have imported it
    assert not available("matplotlib")
    with pytest.raises(MissingExtra) as caught:
        require("matplotlib.pyplot", "plots", "plotting an evaluation")
    assert str(caught.value) == (
        'plotting an evaluation needs matplotlib, which is not installed: pip install "twostage[plots]"'
    )
    assert isinstance(caught.value, ImportError)  # code that falls back on ImportError keeps doing so


def test_a_broken_install_is_not_blamed_on_a_missing_extra(tmp_path, monkeypatch):
    """An installed package that fails on a dependency of its own raises as it is: installing the extra again
    would not help."""
    (tmp_path / "half_installed_pkg").mkdir()
    (tmp_path / "half_installed_pkg" / "__init__.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as caught:
        require("half_installed_pkg", "x", "a feature")
    assert not isinstance(caught.value, MissingExtra) and caught.value.name == "no_such_dependency_xyz"


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    corpus = tmp_path / "corpus.parquet"
    corpus.write_bytes(b"PAR1 not really\n")
    code, err = twostage("index", str(corpus), "--index", str(tmp_path / "c"), "--quiet")
    line = one_line(err)
    assert code == 2
    assert "corpus.parquet" in line and 'needs pyarrow, which is not installed: pip install "twostage[parquet]"' in line


def test_hub_dataset_name_without_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.chdir(tmp_path)
    code, err = twostage("index", "someone/no-such-corpus", "--index", str(tmp_path / "c"), "--quiet")
    line = one_line(err)
    assert code == 2
    assert "someone/no-such-corpus" in line and "no such file or directory" in line
    assert 'pip install "twostage[hf]"' in line


def test_eval_of_a_hub_dataset_without_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.chdir(tmp_path)
    code, err = twostage("eval", "BeIR/no-such-set", "--out", str(tmp_path / "out"), "--quiet")
    line = one_line(err)
    assert code == 2
    assert "BeIR/no-such-set" in line and 'pip install "twostage[hf]"' in line


@pytest.mark.parametrize("module", ["accelerate", "datasets"])
def test_train_without_the_train_extra(tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)
    code, err = twostage(
        "train", "reranker", "--collection", str(tmp_path), "--queries", "q.tsv", "--out", str(tmp_path / "m")
    )
    assert code == 2
    assert one_line(err) == (
        f'twostage train: error: twostage train needs {module}, which is not installed: pip install "twostage[train]"'
    )


def test_ray_without_the_ray_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "one passage"}\n', encoding="utf-8")
    code, err = twostage("index", str(corpus), "--index", str(tmp_path / "c"), "--shards", "2", "--ray", "auto", "-q")
    assert code == 2
    assert (
        one_line(err) == 'twostage index: error: --ray needs ray, which is not installed: pip install "twostage[ray]"'
    )


def test_console_script_without_an_extra_exits_2(tmp_path):
    """The real entry point in a fresh process, with pyarrow hidden the way a lean install lacks it."""
    corpus = tmp_path / "corpus.parquet"
    corpus.write_bytes(b"PAR1 not really\n")
    hide = "import sys; sys.modules['pyarrow'] = sys.modules['pyarrow.parquet'] = None; "
    run = "from twostage.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", hide + run, "index", str(corpus), "--index", str(tmp_path / "c"), "--quiet"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=300,
        cwd=Path(__file__).resolve().parent,
    )
    assert done.returncode == 2, done.stderr
    assert 'pip install "twostage[parquet]"' in one_line(done.stderr)
