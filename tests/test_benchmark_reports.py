"""The benchmarks' own decision and report logic (no models run): which settings bench_levers picks from a tuning
grid, and how bench_speed judges the auto choice against issue 13's targets."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:  # as running ``python benchmarks/NAME.py`` does: benchmarks/common.py importable
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def levers():
    return _load("bench_levers")


@pytest.fixture(scope="module")
def speed():
    return _load("bench_speed")


def test_levers_grid_covers_every_first_stage(levers):
    passes = levers.grid_passes()
    assert len(passes) == len(levers.PRF_GRID) * len(levers.TOKEN_GRID) + len(levers.HYBRID_GRID) * len(
        levers.HYBRID_PRF_GRID) * len(levers.TOKEN_GRID)
    assert {stage for stage, _, _ in passes} == {"dense", *levers.HYBRID_GRID}


def test_levers_choose_keeps_each_lever_alone_and_the_best_combination(levers):
    grid = {key: 0.40 for key in [("dense", None, "plain", None), ("dense", None, "plain", "rrf"),
                                  ("dense", None, "plain", "zscore:0.7"), ("dense", "1:1", "plain", None),
                                  ("dense", None, "special", None), ("hybrid", None, "plain", None),
                                  ("hybrid", "10:0.5", "idf", "zscore:0.2")]}
    grid[("dense", None, "plain", "zscore:0.7")] = 0.45
    grid[("hybrid", None, "plain", None)] = 0.43
    grid[("hybrid", "10:0.5", "idf", "zscore:0.2")] = 0.50
    choice = levers.choose(grid)
    assert choice["fusion"] == ("dense", None, "plain", "zscore:0.7")
    assert choice["first stage"] == ("hybrid", None, "plain", None)
    assert choice["combination"] == ("hybrid", "10:0.5", "idf", "zscore:0.2")
    names = [s.name for s in levers.systems_from(choice)]
    assert "hybrid" in names and "hybrid+maxsim" in names and names[-1] == "engine default (MAXSIM_DEFAULTS)"
    best = next(s for s in levers.systems_from(choice) if s.name.startswith("best:"))
    assert best.options() == {"rerank": True, "first_stage": "hybrid", "prf": "10:0.5", "query_tokens": "idf",
                              "fusion": "zscore:0.2"}


def test_speed_auto_lines_judge_issue_13_targets(speed):
    report = {
        "auto": {
            "bi-encoder": {"choice": "openvino-int8", "passed": ["torch", "openvino-int8"], "measured_at": "now",
                           "measure_seconds": 7.0},
            "cross-encoder": {"choice": "torch", "passed": ["torch", "onnx"], "measured_at": "now",
                              "measure_seconds": 7.5},
        },
        "encoding": {"systems": {"torch": {"speedup": 1.03}, "openvino-int8": {"speedup": 4.2}}},
        "reranking": {"systems": {"torch": {"speedup": 1.15}, "onnx": {"speedup": 1.25}}},
    }
    bi, cross = speed.auto_lines(report)[:2]
    assert "1.00x the fastest" in bi and "within 5% of the fastest met" in bi and ">= 4x met" in bi
    assert "0.92x the fastest" in cross and "within 5% of the fastest **not met**" in cross
    assert ">= 3x **not met**" in cross
