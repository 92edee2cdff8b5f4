"""``--backend auto``: the quality gate rejects a backend that ranks differently, the fastest passing backend is chosen
per stage, the choice is cached per machine and model and reused without measuring, a corrupt cache is measured
again, an explicit backend (or $TWOSTAGE_BACKEND) wins, int8 collections keep their own model, and
``twostage info --backends`` prints the table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twostage.cli import main
from twostage.engine import Engine
from twostage.retriever import backend_choice
from twostage.runtime import autotune
from twostage.runtime.autotune import Probe, calibrate, read_choice, stage_backend
from twostage.runtime.backends import compatible_query_backend, default_backend
from twostage.runtime.cpu import CpuInfo
from twostage.runtime.models import model_fingerprint

#: one check query per row, one score per candidate: torch's ranking is 0, 1, 2, ... 11
REFERENCE = [np.linspace(1.0, 0.0, 12) + 0.01 * q for q in range(6)]


class Clock:
    """A fake ``time.perf_counter`` that only the fake probes advance: timings are injected, never measured."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def private_choices(monkeypatch, tmp_path):
    """Each test its own cached choices (the exports stay shared in the session's cache)."""
    monkeypatch.setattr(autotune, "cache_root", lambda: tmp_path / "cache")


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(autotune, "perf_counter", fake)
    monkeypatch.setattr(autotune, "missing_dependencies", lambda backend: [])  # every backend "installed"
    monkeypatch.delenv("TWOSTAGE_BACKEND", raising=False)
    return fake


def fake_loader(clock: Clock, seconds: dict[str, float], scores: dict[str, list[np.ndarray]] | None = None):
    """Probes whose unit of 10 items takes ``seconds[backend]`` on ``clock``; scores as torch's unless given."""
    loaded = []

    def load(backend: str) -> Probe:
        loaded.append(backend)

        def work() -> int:
            clock.now += seconds[backend]
            return 10

        return Probe(lambda: (scores or {}).get(backend, REFERENCE), work)

    load.loaded = loaded  # type: ignore[attr-defined]
    return load


def test_gate_rejects_a_backend_that_ranks_differently_and_the_fastest_passing_one_wins(clock):
    swapped = [row[::-1] for row in REFERENCE]  # ranks everything upside down
    noisy = [row + np.r_[np.zeros(9), 0.2, 0.0, 0.0] for row in REFERENCE]  # torch's 10th moves up to 8th
    seconds = {"torch": 1.0, "onnx": 0.1, "onnx-int8": 0.5, "openvino": 0.4, "openvino-int8": 0.3}
    load = fake_loader(clock, seconds, {"onnx": swapped, "openvino-int8": noisy})
    result = calibrate("bi-encoder", "f" * 64, load, budget_s=0)
    table = {m.backend: m for m in result.measurements}
    assert not table["onnx"].passed and table["onnx"].ndcg < 0.5 and table["onnx"].per_second is None
    assert table["openvino-int8"].passed and 0.995 <= table["openvino-int8"].ndcg < 1.0  # a tiny swap passes
    assert table["torch"].ndcg == pytest.approx(1.0) and table["torch"].per_second == pytest.approx(10.0)
    assert result.choice == "openvino-int8"  # onnx is faster but fails the gate
    assert json.loads(result.path.read_text())["choice"] == "openvino-int8"


def test_each_stage_gets_its_own_choice_and_a_failing_backend_is_skipped(clock):
    def broken(backend: str) -> Probe:
        if backend == "openvino":
            raise RuntimeError("no export for this model\nsecond line")
        return encoder_load(backend)

    names = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
    encoder_load = fake_loader(clock, dict(zip(names, (1.0, 0.9, 0.2, 0.1, 0.5))))
    reranker_load = fake_loader(clock, dict(zip(names, (1.0, 0.9, 0.6, 0.5, 0.4))))
    encoder = calibrate("bi-encoder", "a" * 64, broken, budget_s=0)
    reranker = calibrate("cross-encoder", "b" * 64, reranker_load, budget_s=0)
    assert (encoder.choice, reranker.choice) == ("onnx-int8", "openvino-int8")
    failed = next(m for m in encoder.measurements if m.backend == "openvino")
    assert not failed.passed and failed.error == "RuntimeError: no export for this model"
    assert any(line.endswith("<- chosen") and "onnx-int8" in line for line in autotune.describe(encoder))


def test_choice_is_cached_per_machine_and_model_and_reused(clock, monkeypatch):
    load = fake_loader(clock, {"torch": 1.0, "onnx": 0.2, "onnx-int8": 0.5, "openvino": 0.4, "openvino-int8": 0.3})
    first = calibrate("bi-encoder", "c" * 64, load, budget_s=0)
    again = read_choice("bi-encoder", "c" * 64)
    assert again is not None and again.choice == first.choice == "onnx" and again.path == first.path
    assert stage_backend("auto", "cpu", "bi-encoder", "c" * 64) == "onnx"
    assert stage_backend(None, "cpu", "bi-encoder", "c" * 64) == "onnx"
    assert read_choice("bi-encoder", "d" * 64) is None  # another model
    assert read_choice("cross-encoder", "c" * 64) is None  # another stage
    with monkeypatch.context() as patch:
        patch.setattr(autotune, "version", lambda name: "99.0")
        assert read_choice("bi-encoder", "c" * 64) is None  # other runtime versions
    assert read_choice("bi-encoder", "c" * 64) is not None
    monkeypatch.setattr(autotune, "cpu_info", lambda: CpuInfo("Another CPU", ("avx2",)))
    assert read_choice("bi-encoder", "c" * 64) is None  # another machine
    assert stage_backend("auto", "cpu", "bi-encoder", "c" * 64) == default_backend("cpu")  # nothing cached: default


def test_explicit_backend_environment_and_gpu_win_over_the_cached_choice(clock, monkeypatch):
    calibrate(
        "bi-encoder", "e" * 64, fake_loader(clock, dict.fromkeys(autotune.BACKENDS, 1.0) | {"onnx": 0.1}), budget_s=0
    )
    assert stage_backend("auto", "cpu", "bi-encoder", "e" * 64) == "onnx"
    assert stage_backend("openvino", "cpu", "bi-encoder", "e" * 64) == "openvino"
    assert stage_backend("auto", "cuda", "bi-encoder", "e" * 64) == "torch"
    monkeypatch.setenv("TWOSTAGE_BACKEND", "torch")
    assert stage_backend("auto", "cpu", "bi-encoder", "e" * 64) == "torch"


def test_corrupt_cache_is_measured_again(clock, tiny_bi_encoder_dir, monkeypatch):
    fingerprint = model_fingerprint(str(tiny_bi_encoder_dir))
    seconds = {"torch": 1.0, "onnx": 0.9, "onnx-int8": 0.8, "openvino": 0.7, "openvino-int8": 0.1}
    load = fake_loader(clock, seconds)
    monkeypatch.setattr(backend_choice, "bi_encoder_probe", lambda model, backend, **_: load(backend))
    first = backend_choice.bi_encoder_choice(str(tiny_bi_encoder_dir))
    assert first.choice == "openvino-int8" and first.key["fingerprint"] == fingerprint
    assert len(load.loaded) == 5
    assert backend_choice.bi_encoder_choice(str(tiny_bi_encoder_dir)).choice == "openvino-int8"
    assert len(load.loaded) == 5  # the second call measured nothing
    for garbage in (
        "{not json",
        json.dumps({"choice": "onnx"}),
        json.dumps({**json.loads(first.path.read_text()), "choice": "tensorrt"}),
    ):
        first.path.write_text(garbage)
        assert read_choice("bi-encoder", fingerprint) is None
        assert backend_choice.bi_encoder_choice(str(tiny_bi_encoder_dir)).choice == "openvino-int8"
    assert len(load.loaded) == 20  # measured again each time


def test_engine_indexes_with_the_measured_choice_and_int8_collections_keep_their_model(
    clock, tiny_bi_encoder_dir, tmp_path, monkeypatch
):
    pytest.importorskip("onnxruntime")
    fingerprint = model_fingerprint(str(tiny_bi_encoder_dir))
    calibrate(
        "bi-encoder", fingerprint, fake_loader(clock, dict.fromkeys(autotune.BACKENDS, 1.0) | {"onnx": 0.1}), budget_s=0
    )
    monkeypatch.setattr(backend_choice, "calibrate", lambda *a, **k: pytest.fail("measured although cached"))
    with Engine.create(tmp_path / "auto", model=str(tiny_bi_encoder_dir), reranker=None, index_type="flat") as engine:
        assert engine.encoder.backend == "onnx" and engine.collection.manifest.extra["backend"] == "onnx"
    with Engine.open(tmp_path / "auto", reranker=None) as engine:
        assert engine.encoder.backend == "onnx"
    with Engine.create(
        tmp_path / "int8", model=str(tiny_bi_encoder_dir), reranker=None, index_type="flat", backend="onnx-int8"
    ) as engine:  # an explicit backend wins over the cached choice
        assert engine.collection.manifest.extra["backend"] == "onnx-int8"
    with Engine.open(tmp_path / "int8", reranker=None) as engine:  # an int8 collection keeps its own model
        assert engine.encoder.backend == "onnx-int8"
    assert compatible_query_backend("torch", stage_backend("auto", "cpu", "bi-encoder", fingerprint)) == "onnx"


def test_info_backends_prints_the_table_and_the_choice(
    clock, tiny_bi_encoder_dir, tiny_cross_encoder_dir, capsys, monkeypatch
):
    from twostage.reranker import backend_choice as reranker_choice

    encoder_load = fake_loader(clock, dict.fromkeys(autotune.BACKENDS, 1.0) | {"openvino": 0.5})
    reranker_load = fake_loader(clock, dict.fromkeys(autotune.BACKENDS, 1.0) | {"onnx-int8": 0.5})
    monkeypatch.setattr(backend_choice, "bi_encoder_probe", lambda model, backend, **_: encoder_load(backend))
    monkeypatch.setattr(reranker_choice, "cross_encoder_probe", lambda model, backend, **_: reranker_load(backend))
    args = ["info", "--backends", "--model", str(tiny_bi_encoder_dir), "--reranker", str(tiny_cross_encoder_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("cpu: ") and out.count("  cache: ") == 2 and out.count("<- chosen") == 2
    assert f"bi-encoder {tiny_bi_encoder_dir}: openvino (measured" in out
    assert f"cross-encoder {tiny_cross_encoder_dir}: onnx-int8 (measured" in out
    assert "documents/s" in out and "pairs/s" in out and "2.00x" in out
    assert main([*args, "--json"]) == 0 and len(encoder_load.loaded) == 5  # the second run read the cache
    report = json.loads(capsys.readouterr().out)
    assert report["stages"]["bi-encoder"]["choice"] == "openvino" and report["cpu"] == autotune.cpu_info().model
    assert len(report["stages"]["cross-encoder"]["measurements"]) == len(autotune.BACKENDS)
    assert main([*args, "--calibrate"]) == 0 and len(encoder_load.loaded) == 10  # --calibrate measures again


def test_real_probes_measure_the_tiny_bi_encoder(tiny_bi_encoder_dir, monkeypatch):
    monkeypatch.delenv("TWOSTAGE_BACKEND", raising=False)
    monkeypatch.setattr(autotune, "BACKENDS", ("torch", "onnx"))
    monkeypatch.setattr(autotune, "BUDGET_S", 0.0)
    result = backend_choice.bi_encoder_choice(str(tiny_bi_encoder_dir))
    table = {m.backend: m for m in result.measurements}
    assert set(table) == {"torch", "onnx"} and result.choice in table and table["torch"].ndcg == pytest.approx(1.0)
    assert table["onnx"].passed and all(m.per_second > 0 for m in table.values())


def test_info_needs_a_directory_or_backends(capsys):
    assert main(["info"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_first_index_exports_once_and_measures_nothing(clock, tiny_bi_encoder_dir, tmp_path, capsys, monkeypatch):
    """The first ``twostage index`` of a model on a machine takes the preference order without measuring (that is
    ``info --backends``' job) and says so while it exports; a later one is silent; a measured choice is used."""
    monkeypatch.setenv("TWOSTAGE_CACHE_DIR", str(tmp_path / "fresh"))  # no export of the model yet
    monkeypatch.setattr(backend_choice, "calibrate", lambda *a, **k: pytest.fail("index measured backends"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "one passage"}\n{"id": "b", "text": "another passage"}\n')
    for run, announced in (("first", True), ("second", False)):
        args = ["index", str(corpus), "--index", str(tmp_path / run), "--model", str(tiny_bi_encoder_dir)]
        code = main([*args, "--index-type", "flat"])
        err = capsys.readouterr().err
        assert code == 0 and ("exporting the model for it once" in err) is announced, err
        with Engine.open(tmp_path / run, reranker=None) as engine:
            assert engine.collection.manifest.extra["backend"] == default_backend()
    fingerprint = model_fingerprint(str(tiny_bi_encoder_dir))
    timings = dict.fromkeys(autotune.BACKENDS, 1.0) | {"onnx": 0.1}
    calibrate("bi-encoder", fingerprint, fake_loader(clock, timings), budget_s=0)  # as info --backends would
    assert main(["index", str(corpus), "--index", str(tmp_path / "measured"), "--model", str(tiny_bi_encoder_dir)]) == 0
    with Engine.open(tmp_path / "measured", reranker=None) as engine:
        assert engine.collection.manifest.extra["backend"] == "onnx"
