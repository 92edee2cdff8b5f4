"""The package layout holds: dependencies point one way (runtime <- stages and indexes <- engine <- CLI/server, eval
and training beside), found by reading every module's imports with ast (lazy imports inside functions count too);
and the wheel installs one import name, ``twostage``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: source folder -> the import package it installs as (pyproject.toml's package-dir)
FOLDERS = {
    "twostage": "twostage",
    "runtime": "twostage.runtime",
    "retriever": "twostage.retriever",
    "reranker": "twostage.reranker",
    "indexes": "twostage.indexes",
    "eval": "twostage.eval",
    "training": "twostage.training",
}
STAGES = ("retriever", "reranker")
#: the front ends: what sits above the engine and may import anything (the CLI's and the server's modules)
APP_MODULES = ("cli", "server", "server_cli", "train_cli", "search_options", "__main__", "files_cli")
#: the longest a product file may be
MAX_LINES = 500


def layer(module: str) -> str:
    """The package a module belongs to: runtime, retriever, reranker, indexes, eval, training, engine (the
    ``twostage`` core: engine, results, errors, batcher) or app (CLI and server)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in {name for name in FOLDERS if name != "twostage"}:
        return parts[1]
    front_end = len(parts) > 1 and (parts[1] in APP_MODULES or parts[1].startswith(("cli_", "server_")))
    return "app" if front_end else "engine"


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """The twostage modules ``module`` imports, relative imports resolved."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.split(".")[0] == "twostage")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "twostage":
                out.add(target)
                out.update(f"{target}.{alias.name}" for alias in node.names)
    known = modules()
    return {name for name in out if name in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module: imports(module, path) for module, path in modules().items()}


def edges(graph: dict[str, set[str]]) -> list[tuple[str, str, str, str]]:
    """(importing layer, imported layer, importing module, imported module) for every import across layers."""
    return [(layer(a), layer(b), a, b) for a, targets in graph.items() for b in targets if layer(a) != layer(b)]


def test_the_walk_sees_the_packages(graph):
    assert {layer(m) for m in graph} == {*FOLDERS, "engine", "app"} - {"twostage"}
    assert "twostage.runtime.config" in graph["twostage.engine"]


def test_a_stage_never_imports_the_other_stage(graph):
    bad = [f"{a} imports {b}" for la, lb, a, b in edges(graph) if la in STAGES and lb in STAGES]
    assert bad == []


def test_stages_and_indexes_import_nothing_above_them(graph):
    """A stage or indexes imports only the runtime (and, for stages, indexes' documents): never eval, training, the
    engine, the CLI or the server; the runtime imports no other package at all."""
    allowed = {
        "retriever": {"runtime", "indexes"},
        "reranker": {"runtime", "indexes"},
        "indexes": set(),
        "runtime": set(),
    }
    bad = [f"{a} imports {b}" for la, lb, a, b in edges(graph) if la in allowed and lb not in allowed[la]]
    assert bad == []


def test_nothing_below_imports_training(graph):
    bad = [f"{a} imports {b}" for la, lb, a, b in edges(graph) if lb == "training" and la != "app"]
    assert bad == []


def test_training_needs_only_stages_engine_and_eval_metrics(graph):
    """Training mines with the engine and validates with eval's metrics (and reads queries with eval's readers);
    never eval's harness: the front end composes the two."""
    standalone = {"twostage.eval.metrics", "twostage.eval.datasets", "twostage.eval.trec", "twostage.eval"}
    bad = [
        f"{a} imports {b}" for la, lb, a, b in edges(graph) if la == "training" and lb == "eval" and b not in standalone
    ]
    assert bad == []


def test_integrations_use_only_the_public_api(graph):
    """The framework adapters (``twostage.integrations``) import what a user imports: ``twostage`` itself."""
    bad = [
        f"{a} imports {b}"
        for a, targets in graph.items()
        if a.startswith("twostage.integrations")
        for b in targets
        if b != "twostage" and not b.startswith("twostage.integrations")
    ]
    assert bad == [] and "twostage.integrations.langchain" in graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """The first cycle a depth-first walk of ``graph`` meets (a node importing itself aside), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node:
                continue
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a", "c"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a", "b"}, "b": set()}) is None


def test_no_import_cycle_between_packages(graph):
    layers: dict[str, set[str]] = defaultdict(set)
    for la, lb, _, _ in edges(graph):
        layers[la].add(lb)
    if cycle := find_cycle(layers):
        pytest.fail("import cycle between packages: " + " -> ".join(cycle))


def test_no_import_circle_between_modules(graph):
    """Module by module (lazy imports inside functions count too): no module reaches itself through its imports."""
    if cycle := find_cycle(graph):
        pytest.fail("import circle: " + " -> ".join(cycle))


def test_eval_and_training_import_neither_stage(graph):
    """eval and training build everything through the engine (``Engine.open``/``create`` with a search request)."""
    bad = [f"{a} imports {b}" for la, lb, a, b in edges(graph) if la in ("eval", "training") and lb in STAGES]
    assert bad == []


def test_no_product_file_over_500_lines():
    long = {
        str(path.relative_to(REPO)): n
        for path in modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these into smaller modules (at most {MAX_LINES} lines each): {long}"


def test_collections_and_the_vector_index_meet_the_protocols(tmp_path):
    """What the engine types against: one directory and a sharded one both pass for a ``CollectionLike``; the FAISS
    index for a ``VectorIndexLike``, named in the manifest."""
    import json

    import numpy as np

    from twostage.indexes.collection import Collection
    from twostage.indexes.documents import Document
    from twostage.indexes.errors import CollectionError
    from twostage.indexes.protocols import CollectionLike, VectorIndexLike
    from twostage.indexes.sharded import ShardedCollection

    settings = dict(model_name="m", model_fingerprint="f", dimension=4)
    with (
        Collection.create(tmp_path / "one", **settings) as one,
        ShardedCollection.create(tmp_path / "many", shards=2, **settings) as many,
    ):
        for collection in (one, many):
            assert isinstance(collection, CollectionLike)
            collection.upsert([Document("d1", "text")], np.eye(4, dtype=np.float32)[:1])
            collection.commit()
            assert [hit[0] for hit in collection.search(np.eye(4, dtype=np.float32)[:1], 1)[0]] == ["d1"]
        assert isinstance(one.index, VectorIndexLike)
    manifest_path = tmp_path / "one" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["vector_index"] == "faiss"
    manifest_path.write_text(json.dumps({**manifest, "vector_index": "annoy"}))
    with pytest.raises(CollectionError, match=r"manifest.json: field 'vector_index': unknown vector index 'annoy'"):
        Collection.open(tmp_path / "one")


def test_no_product_code_names_the_surrounding_folders():
    """Evaluation data is found through --data-dir, $TWOSTAGE_DATA or ./data; never ``../shared``."""
    bad = [
        str(path.relative_to(REPO))
        for path in modules().values()
        if "../shared" in path.read_text(encoding="utf-8") or "shared/data" in path.read_text(encoding="utf-8")
    ]
    assert bad == []


def test_the_wheel_installs_one_top_level_name(tmp_path):
    """Built from a copy of the sources (the shared tree stays clean): every file lives under ``twostage/``."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, source / folder, ignore=ignore)
    out = tmp_path / "wheel"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = out.glob("twostage-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
        assert top_level == {"twostage"}
        listed = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        if listed:
            assert archive.read(listed[0]).decode().split() == ["twostage"]
    for package in FOLDERS.values():
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert "twostage/static/index.html" in names and "twostage/eval/expected/msmarco-dl20.yaml" in names
