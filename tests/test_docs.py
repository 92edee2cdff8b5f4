"""The documentation site builds strictly (a broken link, anchor or missing page fails), and the code blocks that
README.md and docs/ mark runnable (an HTML comment ``<!-- runnable -->`` on the line before the fence) run as
written, each file's blocks in order in one fresh directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNABLE = re.compile(r"<!-- runnable -->\s*\n```(?P<lang>\w+)[^\n]*\n(?P<code>.*?)\n```", re.DOTALL)


def runnable_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of each block the file marks runnable, in file order."""
    return [(m.group("lang"), m.group("code")) for m in RUNNABLE.finditer(path.read_text(encoding="utf-8"))]


def documented_files() -> list[Path]:
    """README.md and every page of the site that marks a block runnable."""
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [path for path in files if runnable_blocks(path)]


def test_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is in the docs extra (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is in the docs extra")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    built = {path.relative_to(tmp_path / "site").as_posix() for path in (tmp_path / "site").rglob("index.html")}
    for page in ("reference/cli/index.html", "reference/http/index.html", "reference/python/index.html"):
        assert page in built, page
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "twostage search" in cli and "--rerank-depth" in cli  # generated from the parser, not copied
    http = (tmp_path / "site" / "reference" / "http" / "index.html").read_text(encoding="utf-8")
    assert "/search/batch" in http  # generated from the OpenAPI schema
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "(no page yet)" not in benchmarks, "a benchmarks/results/*.json file is shown on no benchmark page"


def test_readme_is_short_and_its_links_resolve() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md is over 250 lines: move the detail into docs/"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"


def test_readme_marks_its_commands_runnable() -> None:
    assert runnable_blocks(REPO / "README.md"), "README.md marks no block <!-- runnable -->"


@pytest.mark.slow
@pytest.mark.parametrize("path", documented_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_runnable_blocks_run(path: Path, tmp_path: Path) -> None:
    """Each block as a user would type it: bash through bash, python through this interpreter, in a scratch
    directory holding a copy of examples/ (what the README's commands read)."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for number, (lang, code) in enumerate(runnable_blocks(path), 1):
        if lang in ("bash", "sh", "shell"):
            command = ["bash", "-euo", "pipefail", "-c", code]
        elif lang == "python":
            command = [sys.executable, "-c", code]
        else:
            raise AssertionError(f"{path.name}: runnable block {number} is {lang!r}, not bash or python")
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"{path.name} block {number}:\n{code}\n--- output ---\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
