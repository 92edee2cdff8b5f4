"""The tree is clean under the project's linters: ruff (lint and format) and mypy, configured in pyproject.toml.

Each check is skipped where its tool is not installed (`pip install -e ".[test]"` installs them)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_check_finds_nothing():
    done = _run("ruff", "-m", "ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_would_change_nothing():
    done = _run("ruff", "-m", "ruff", "format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing():
    done = _run("mypy", str(ROOT / ".ci" / "typecheck.py"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_version_comes_from_one_place():
    """twostage/__init__.py's __version__ is the package's version (setuptools reads it) and `twostage --version`'s."""
    import contextlib
    import io
    from importlib.metadata import version

    import twostage
    from twostage.cli import main

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert version("twostage") == twostage.__version__
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--version"])
    assert out.getvalue().strip() == f"twostage {twostage.__version__}"


def test_every_package_folder_is_in_the_wheel():
    """pyproject.toml lists the packages by hand (the folders are mapped under ``twostage.``): a package folder left
    off the list installs everywhere but in a wheel, where importing it fails."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    roots = {"twostage": "twostage", **setuptools["package-dir"]}
    found = set()
    for package, folder in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([package, *parts]))
    assert sorted(found - set(setuptools["packages"])) == []
