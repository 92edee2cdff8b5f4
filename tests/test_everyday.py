"""Everyday use (issue 11): a query on the default backend starts without torch, and the rough edges a new user hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import EXAMPLES
from test_cli import twostage

from twostage.results import Hit, SearchResult, Timings

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"passage {i} about topic {i % 7}: " + "word " * (i % 11) for i in range(40)]


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, tiny_bi_encoder_dir: Path) -> Path:
    """The example corpus indexed on the default backend (OpenVINO: exported once) with stored tokens (the suite's
    own default is torch: conftest sets TWOSTAGE_BACKEND)."""
    directory = tmp_path_factory.mktemp("everyday") / "index"
    done = twostage(
        "index",
        str(EXAMPLES / "corpus.jsonl"),
        "-i",
        str(directory),
        "--model",
        str(tiny_bi_encoder_dir),
        "--store-tokens",
        "--backend",
        "openvino",
        "-q",
    )
    assert done.returncode == 0, done.stderr
    return directory


# --------------------------------------------------------------------------- fast start
def _run_cli_counting_imports(*args: str, env: dict[str, str] | None = None) -> dict:
    """``twostage ARGS`` in a fresh interpreter, as a user runs it (no TWOSTAGE_BACKEND): its exit code and which
    heavy modules it imported."""
    code = (
        "import json, sys\nfrom twostage.cli import main\ncode = main(sys.argv[1:])\n"
        "print(json.dumps({'code': code, 'loaded': sorted(m for m in ('torch', 'sentence_transformers', "
        "'transformers', 'openvino', 'faiss') if m in sys.modules)}), file=sys.stderr)\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "TWOSTAGE_BACKEND"} | (env or {})
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=environment, timeout=300
    )
    return json.loads(done.stderr.strip().splitlines()[-1]) | {"stdout": done.stdout, "stderr": done.stderr}


def test_search_on_the_default_backend_imports_no_torch(tiny_index: Path) -> None:
    for extra in ((), ("--no-rerank",)):
        done = _run_cli_counting_imports("search", str(tiny_index), "Berlin population", *extra)
        assert done["code"] == 0, done["stderr"]
        assert "cities-" in done["stdout"]
        assert {"torch", "sentence_transformers", "transformers"}.isdisjoint(done["loaded"]), done["loaded"]


def test_index_and_add_on_the_default_backend_import_no_torch(tmp_path: Path, tiny_bi_encoder_dir: Path) -> None:
    """The write path on an exported backend: a first ``index`` on a fresh cache exports the model in a child
    process and encodes without torch, sentence-transformers or transformers; so does a later ``add``; the stored
    tokens come from that backend's forward pass, so they equal MaxSim's own encoding there."""
    env_cache = {"TWOSTAGE_CACHE_DIR": str(tmp_path / "cache")}
    directory = tmp_path / "index"
    model = ("--model", str(tiny_bi_encoder_dir))
    done = _run_cli_counting_imports(
        "index",
        str(EXAMPLES / "corpus.jsonl"),
        "-i",
        str(directory),
        *model,
        "--store-tokens",
        "float16",
        env=env_cache,
    )
    assert done["code"] == 0, done["stderr"]
    assert "exporting the model for it once" in done["stderr"]
    assert {"torch", "sentence_transformers", "transformers"}.isdisjoint(done["loaded"]), done["loaded"]
    extra = tmp_path / "more.jsonl"
    extra.write_text('{"id": "new-1", "text": "A violin maker works in Cremona."}\n', encoding="utf-8")
    done = _run_cli_counting_imports("add", str(directory), str(extra), env=env_cache)
    assert done["code"] == 0, done["stderr"]
    assert {"torch", "sentence_transformers", "transformers"}.isdisjoint(done["loaded"]), done["loaded"]
    assert "exporting" not in done["stderr"]  # exported once

    from twostage import Engine

    os.environ["TWOSTAGE_CACHE_DIR"], previous = env_cache["TWOSTAGE_CACHE_DIR"], os.environ["TWOSTAGE_CACHE_DIR"]
    try:
        with Engine.open(directory, reranker="maxsim", backend="openvino") as engine:
            assert engine.collection.manifest.extra["backend"] == engine.encoder.backend != "torch"
            texts = {d.id: d.text_for_encoding() for d in engine.collection.iter_documents()}
            stored = engine.collection.token_store
            ids = sorted(texts)[:5] + ["new-1"]
            fresh = engine.reranker._light_passages([texts[i] for i in ids])
            for doc_id, tokens in zip(ids, fresh):
                np.testing.assert_allclose(stored.get(doc_id), tokens.astype(np.float32), atol=0.01)
            vectors = engine.collection.embeddings_of(ids)
            np.testing.assert_allclose(vectors, engine.encoder.encode_queries([texts[i] for i in ids]), atol=1e-5)
    finally:
        os.environ["TWOSTAGE_CACHE_DIR"] = previous


def test_bad_input_is_refused_before_any_model_loads(tiny_index: Path, tmp_path: Path) -> None:
    for args, message in [
        (("search", str(tiny_index), "   "), "the query is empty"),
        (("search", str(tiny_index), "--queries", str(tmp_path / "missing.tsv")), "no such queries file"),
    ]:
        done = _run_cli_counting_imports(*args)
        assert done["code"] == 2 and message in done["stderr"], done["stderr"]
        assert {"torch", "openvino", "faiss"}.isdisjoint(done["loaded"]), done["loaded"]


def test_light_path_matches_sentence_transformers(tiny_index: Path, tiny_bi_encoder_dir: Path) -> None:
    """Query vectors and MaxSim scores over stored tokens: the torch-free path equals the sentence-transformers one."""
    from twostage import Engine

    queries = ["How many people live in Berlin?", "violin makers"]
    with Engine.open(tiny_index, reranker="maxsim", backend="openvino") as engine:
        encoder = engine.encoder
        assert encoder.light is not None and encoder._model is None
        light_vectors = encoder.encode_queries(queries)
        options = [{}, {"query_tokens": "plain", "fusion": "none"}, {"query_tokens": "idf+special"}]
        light = [engine.search_many(queries, k=20, top_n=20, **o) for o in options]
        st_vectors = encoder.model.encode_query(queries, normalize_embeddings=True, convert_to_numpy=True)
        np.testing.assert_allclose(light_vectors, st_vectors, atol=1e-5)
        reranker = engine.reranker
        reranker.light = None  # the torch path, same stored tokens
        full = [engine.search_many(queries, k=20, top_n=20, **o) for o in options]
    for a, b in zip(sum(light, []), sum(full, [])):
        assert [h.doc_id for h in a.hits] == [h.doc_id for h in b.hits]
        np.testing.assert_allclose([h.rerank_score for h in a.hits], [h.rerank_score for h in b.hits], atol=1e-4)


def test_light_write_path_matches_sentence_transformers(tiny_bi_encoder_dir: Path) -> None:
    """Documents encoded without torch equal sentence-transformers driving the same export (vectors and cut counts),
    and one pass gives the tokens MaxSim encodes: the same vectors as the torch path's tokens on that backend."""
    from twostage.reranker.maxsim import MaxSimReranker, encode_for_store
    from twostage.retriever.biencoder import BiEncoder

    texts = [*TEXTS, "word " * 600]  # the last is cut at the model's limit
    encoder = BiEncoder(str(tiny_bi_encoder_dir), backend="openvino", cache=None)
    assert encoder.light is not None
    light = encoder.encode_documents(texts)
    store = encode_for_store(encoder, texts)
    reranker = MaxSimReranker(encoder)
    light_tokens = reranker._light_passages(texts)
    assert "torch" not in sys.modules or encoder._model is None  # nothing above loaded sentence-transformers
    st = encoder.model.encode_document(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(light.embeddings, st, atol=1e-5)
    np.testing.assert_allclose(store.embeddings, st, atol=1e-5)
    assert light.truncated == store.truncated == encoder.count_truncated(texts) == 1
    reranker.light = None  # the sentence-transformers path on the same export
    torch_tokens = reranker.passage_token_embeddings(texts)
    for ours, one_pass, theirs in zip(light_tokens, store.tokens, torch_tokens):
        np.testing.assert_allclose(one_pass.astype(np.float32), theirs.astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(one_pass.astype(np.float32), ours.astype(np.float32), atol=2e-3)
    from twostage.reranker.maxsim import content_token_ids

    expected = content_token_ids(encoder.model, texts)
    assert all(np.array_equal(a, b) for a, b in zip(store.token_ids, expected))


# --------------------------------------------------------------------------- defects
def test_stats_reports_the_encoders_backend() -> None:
    from twostage.server import _engine_info

    encoder = SimpleNamespace(name="m", backend_tag="openvino/bf16")
    engine = SimpleNamespace(
        info=lambda: {"index_type": "flat"}, reranker=None, encoder=encoder, notices=[], collection=[1, 2]
    )
    assert _engine_info(engine)["backend"] == "openvino/bf16"


def _hit(doc_id: str, retrieval: float, rank: int, rerank: float | None = None, rerank_rank: int | None = None) -> Hit:
    return Hit(doc_id, "t", retrieval, rank, rerank, rerank_rank)


def test_run_rows_fall_down_the_list_beneath_the_reranked_ones() -> None:
    hits = [_hit("b", 0.5, 2, 3.0, 1), _hit("a", 0.9, 1, 1.0, 2), _hit("c", 0.4, 3), _hit("d", 0.3, 4)]
    run = SearchResult("q", hits, Timings(), 4).run()
    assert list(run) == ["b", "a", "c", "d"]
    scores = list(run.values())
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 4
    assert SearchResult("q", [_hit("a", 0.9, 1), _hit("b", 0.5, 2)], Timings(), 2).run() == {"a": 0.9, "b": 0.5}


def test_batch_run_holds_every_candidate(tiny_index: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q.tsv"
    queries.write_text("1\tBerlin population\n2\tviolin makers\n", encoding="utf-8")
    run = tmp_path / "run.trec"
    done = twostage(
        "search", str(tiny_index), "--queries", str(queries), "--run", str(run), "--k", "30", "--backend", "openvino"
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in run.read_text().splitlines()]
    for qid in ("1", "2"):
        mine = [r for r in rows if r[0] == qid]
        assert len(mine) == 30  # --k candidates, not --top's 10
        scores = [float(r[4]) for r in mine]
        assert scores == sorted(scores, reverse=True) and [int(r[3]) for r in mine] == list(range(1, 31))


def test_store_tokens_reads_and_writes_the_embedding_cache(tmp_path: Path, tiny_bi_encoder_dir: Path) -> None:
    from twostage import Engine
    from twostage.retriever.biencoder import BiEncoder

    encoder = BiEncoder(str(tiny_bi_encoder_dir), backend="torch")
    docs = [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)]
    reports = []
    for name, tokens in (("first", True), ("second", True), ("plain", False)):
        with Engine.create(tmp_path / name, encoder=encoder, reranker=None, store_tokens=tokens) as engine:
            reports.append(engine.add(docs))
    assert [r.cache_hits for r in reports] == [0, len(TEXTS), len(TEXTS)]


def test_quiet_means_quiet_everywhere_and_version() -> None:
    from twostage.cli import build_parser

    for argv in (["index", "c.jsonl", "-i", "d", "-q"], ["add", "d", "c.jsonl", "-q"], ["eval", "msmarco-dl20", "-q"]):
        assert build_parser().parse_args(argv).quiet is True
    assert build_parser().parse_args(["eval", "--run", "r", "--qrels", "q", "--per-query"]).per_query is True
    done = twostage("--version")
    assert done.returncode == 0 and done.stdout.startswith("twostage ")


def test_main_job_directory_is_ignored_by_git() -> None:
    assert "/example-index/" in (ROOT / ".gitignore").read_text().splitlines()


def test_interrupted_message_starts_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from twostage import cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "info", interrupted)
    done = twostage("info", "anywhere")
    assert done.returncode == 130 and done.stderr.startswith("\ninterrupted")


def test_reranker_fallback_notice_once_in_each_interfaces_words(tiny_index: Path, tiny_bi_encoder_dir: Path) -> None:
    from twostage import Engine
    from twostage import engine as engine_module
    from twostage.retriever.biencoder import BiEncoder

    encoder = BiEncoder(str(tiny_bi_encoder_dir), backend="openvino")
    engine_module._WARNED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two engines in one process: one warning
            with Engine.open(tiny_index, encoder=encoder) as engine:
                results = [engine.search("Berlin population", k=10) for _ in range(2)]
    fallback = [w for w in caught if "using late-interaction MaxSim" in str(w.message)]
    assert len(fallback) == 1 and "--reranker" not in str(fallback[0].message)
    assert all(not r.notices for r in results) and results[0].reranker == "maxsim"

    done = twostage("search", str(tiny_index), "Berlin population", "--backend", "openvino")
    lines = [line for line in done.stderr.splitlines() if "MaxSim" in line]
    assert done.returncode == 0 and len(lines) == 1 and "--reranker PATH" in lines[0]
    done = twostage("search", str(tiny_index), "Berlin population", "--json", "--backend", "openvino")
    assert "MaxSim" not in done.stdout


def test_setup_script_picks_the_cpu_torch_build_and_falls_back_to_pypi() -> None:
    script = (ROOT / "run").read_text()
    assert "TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu" in script
    assert 'pip install "$TORCH" --index-url "$TORCH_INDEX_URL" || pip install "$TORCH"' in script
    assert os.access(ROOT / "run", os.X_OK)
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert first_block == ["./run demo", "./run test"]


def test_eval_shows_progress_like_index(tmp_path: Path, tiny_bi_encoder_dir: Path) -> None:
    args = [
        "eval",
        str(EXAMPLES),
        "--model",
        str(tiny_bi_encoder_dir),
        "--systems",
        "bm25",
        "dense",
        "--no-rerank",
        "--index",
        str(tmp_path / "index"),
        "--out",
        str(tmp_path / "out"),
    ]
    shown = twostage(*args)
    assert shown.returncode == 0, shown.stderr
    assert "doc/s" in shown.stderr and "query/s" in shown.stderr  # the indexing bar and the per-system query bars
    quiet = twostage(*args, "-q")
    assert quiet.returncode == 0 and "doc/s" not in quiet.stderr and "query/s" not in quiet.stderr
