"""Run mypy over the product packages under their import names (`twostage.retriever`, ...).

The design card keeps `retriever/`, `reranker/`, ... at the top level while their import names live under
`twostage.`; setuptools maps them at install time (an import hook for editable installs), which mypy cannot follow.
So this builds that layout as symlinks under .mypy_cache/layout/ (rebuilt on every run, so new files are seen), runs
mypy on it with the options in pyproject.toml's [tool.mypy], and prints findings with the repository's own paths.
Exit status: mypy's (0 clean, 1 findings, 2 usage error).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: mypy brings tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = ROOT / ".mypy_cache" / "layout"


def package_dirs() -> dict[str, str]:
    """`twostage.x` -> its folder, as pyproject.toml's [tool.setuptools.package-dir] maps them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(config["tool"]["setuptools"]["package-dir"])


def build_layout() -> dict[Path, str]:
    """Link twostage/ and the mapped folders into LAYOUT/twostage; returns layout path -> repository path."""
    shutil.rmtree(LAYOUT, ignore_errors=True)
    package = LAYOUT / "twostage"
    package.mkdir(parents=True)
    links: dict[Path, str] = {}
    for entry in sorted((ROOT / "twostage").iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
            links[package / entry.name] = f"twostage/{entry.name}"
    for name, folder in package_dirs().items():
        subpackage = name.split(".", 1)[1]
        (package / subpackage).symlink_to(ROOT / folder, target_is_directory=True)
        links[package / subpackage] = folder
    return links


def main() -> int:
    links = build_layout()
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *sys.argv[1:]]
    command.append(os.path.relpath(LAYOUT / "twostage", ROOT))
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    output = done.stdout + done.stderr
    # longest first, so that twostage/retriever/ is replaced before twostage/
    for link, original in sorted(links.items(), key=lambda item: -len(str(item[0]))):
        output = output.replace(os.path.relpath(link, ROOT) + "/", original + "/")
        output = output.replace(os.path.relpath(link, ROOT), original)
    print(output, end="")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
