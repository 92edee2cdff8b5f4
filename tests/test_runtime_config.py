"""One RuntimeConfig (device, backend, batch size, threads), built once and handed over: checked on construction,
placed on a concrete device and backend, and passed by the engine, the CLI, eval and training to both stages."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

import twostage.engine
from twostage.engine import Engine
from twostage.runtime import backends
from twostage.runtime.config import (
    RuntimeConfig,
    RuntimeConfigError,
    add_runtime_arguments,
    cache_root,
    runtime_config,
    runtime_from_args,
)

DOCS = [{"id": f"d{i}", "text": f"document {i} about berlin and the river spree"} for i in range(6)]


def test_bad_settings_are_one_line_errors():
    for bad in ({"device": "gpu"}, {"device": "cuda:x"}, {"batch_size": 0}, {"threads": 0}, {"backend": "tensorrt"}):
        with pytest.raises(RuntimeConfigError) as info:
            RuntimeConfig(**bad)
        assert "\n" not in str(info.value)
    assert RuntimeConfig(device=" CUDA:1 ").device == "cuda:1"


def test_placement_on_this_machine():
    assert RuntimeConfig(device="cpu", backend="torch").placement() == ("cpu", "torch")
    assert RuntimeConfig(device="auto", backend="onnx").placement() == ("cpu", "onnx")  # a CPU-only backend: the CPU
    with pytest.raises(RuntimeConfigError, match="runs on the CPU only"):
        RuntimeConfig(device="cuda", backend="openvino-int8").placement()
    if not torch.cuda.is_available():
        assert RuntimeConfig(device="auto", backend="torch").placement() == ("cpu", "torch")
        with pytest.raises(RuntimeConfigError, match="sees no CUDA device"):
            RuntimeConfig(device="cuda").placement()


def test_shorthands_override_the_config():
    base = RuntimeConfig(device="cpu", batch_size=8)
    assert runtime_config(base, backend=None, batch_size=None) is base
    assert runtime_config(base, backend="torch", batch_size=4) == RuntimeConfig(
        device="cpu", backend="torch", batch_size=4
    )
    assert runtime_config(None) == RuntimeConfig()


def test_cache_root_is_defined_once(monkeypatch, tmp_path):
    from twostage.retriever.cache import default_cache_path
    from twostage.runtime.export import models_root

    monkeypatch.setenv("TWOSTAGE_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path
    assert default_cache_path() == tmp_path / "embeddings.sqlite" and models_root() == tmp_path / "models"
    monkeypatch.delenv("TWOSTAGE_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "twostage"


def test_command_line_options_build_it_once():
    parser = argparse.ArgumentParser()
    add_runtime_arguments(parser)
    args = parser.parse_args(["--device", "cpu", "--backend", "torch", "--batch-size", "5", "--threads", "1"])
    assert runtime_from_args(args) == RuntimeConfig(device="cpu", backend="torch", batch_size=5, threads=1)
    assert runtime_from_args(parser.parse_args([])) == RuntimeConfig()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["--device", "gpu"])
    training = argparse.ArgumentParser()
    training.add_argument("--batch-size", type=int, default=16)  # the trainer's own rows per step
    add_runtime_arguments(training, batch_size=False)
    assert runtime_from_args(training.parse_args([]), batch_size=False).batch_size == RuntimeConfig.batch_size


@pytest.fixture
def spies(monkeypatch):
    """What the engine hands the bi-encoder and the reranker loader."""
    calls: dict[str, dict] = {}
    real_encoder, real_loader = twostage.engine.BiEncoder, twostage.engine.load_reranker

    def encoder(*args, **kwargs):
        calls["bi-encoder"] = kwargs
        return real_encoder(*args, **kwargs)

    def loader(*args, **kwargs):
        calls["reranker"] = kwargs
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(twostage.engine, "BiEncoder", encoder)
    monkeypatch.setattr(twostage.engine, "load_reranker", loader)
    monkeypatch.setattr(backends, "_THREADS", None)  # threads are process-wide: undone after the test
    threads = torch.get_num_threads()
    yield calls
    torch.set_num_threads(threads)


def test_engine_hands_the_settings_to_both_stages(tmp_path, tiny_bi_encoder_dir, tiny_cross_encoder_dir, spies):
    runtime = RuntimeConfig(device="cpu", backend="torch", batch_size=7, threads=1)
    with Engine.create(
        tmp_path / "c", model=str(tiny_bi_encoder_dir), reranker=str(tiny_cross_encoder_dir), runtime=runtime
    ) as engine:
        engine.add(DOCS)
        assert engine.runtime == runtime and (engine.device, engine.backend) == ("cpu", "torch")
        assert engine.encoder.batch_size == 7 and torch.get_num_threads() == 1
        assert engine.search("berlin river", k=3, top_n=2).reranker == str(tiny_cross_encoder_dir)
        assert engine.reranker.batch_size == 7
    wanted = {"device": "cpu", "batch_size": 7, "backend": "torch", "threads": 1}
    assert {k: spies["bi-encoder"][k] for k in wanted} == wanted
    assert {k: spies["reranker"][k] for k in wanted} == wanted

    spies.clear()
    with Engine.open(tmp_path / "c", reranker="none", backend="torch", batch_size=3) as engine:  # the shorthands
        assert engine.runtime == RuntimeConfig(backend="torch", batch_size=3) and engine.encoder.batch_size == 3


def test_cuda_with_a_cpu_only_backend_is_refused_by_the_cli(tmp_path, tiny_bi_encoder_dir, spies):
    from twostage.cli import main

    Engine.create(
        tmp_path / "c",
        model=str(tiny_bi_encoder_dir),
        reranker=None,
        runtime=RuntimeConfig(device="cpu", backend="torch"),
    ).close()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["search", str(tmp_path / "c"), "berlin", "--device", "cuda", "--backend", "onnx", "--json"])
    assert code == 2
    assert err.getvalue().count("\n") == 1 and "runs on the CPU only" in err.getvalue()
    assert "Traceback" not in err.getvalue()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["info", str(tmp_path / "c"), "--json"]) == 0  # nothing was left open or changed
    assert json.loads(out.getvalue())["document_count"] == 0
