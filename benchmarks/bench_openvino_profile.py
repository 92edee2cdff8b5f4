"""Where the OpenVINO backends spend their time, per operation (OpenVINO's own counters): is the model already in its
int8 matrix kernels (then only a CPU with more int8 throughput, e.g. AMX, makes it faster), or somewhere else?

    python benchmarks/bench_openvino_profile.py     # writes benchmarks/results/openvino_profile.md and .json

Both models of bench_speed (the packaged all-MiniLM-L6-v2 bi-encoder; its cross-encoder shape with a seeded head)
on openvino and openvino-int8, compiled as twostage compiles them (one latency request, one thread per core) plus
PERF_COUNT, over 256 msmarco-dl20 passages (sorted by length, batches of 32) and 256 query-passage pairs (4 queries
x their BM25 top 64). Without the dataset the script says so and exits 0.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np  # noqa: E402
from common import (  # noqa: E402  (first: repo importable, hub off)
    RESULTS,
    benchmark_cross_encoder,
    machine,
    minilm_path,
    read_data,
)
from common import SPEED_DATA as DATA  # noqa: E402

from twostage.runtime.backends import configure_threads  # noqa: E402
from twostage.runtime.config import cache_root  # noqa: E402

BACKENDS = ("openvino", "openvino-int8")
BATCH = 32


def exported(stage: str, backend: str, ce_dir: Path) -> Path:
    """The export twostage itself runs for ``stage`` on ``backend`` (built on first use, then cached)."""
    if stage == "bi-encoder":
        from twostage.retriever.biencoder import BiEncoder

        return BiEncoder(minilm_path(), backend=backend, cache=None).runtime.path
    from twostage.reranker.cross_encoder import CrossEncoderReranker

    return CrossEncoderReranker(str(ce_dir), backend=backend).runtime.path


def profile(path: Path, backend: str, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Seconds per (operation, kernel) over ``feeds``, after one untimed pass, with the product's compile settings."""
    import openvino as ov

    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": configure_threads(),
        "PERF_COUNT": True,
    }
    if backend.endswith("int8"):
        config["INFERENCE_PRECISION_HINT"] = "f32"  # as runtime.backends compiles int8 models
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    names = [port.get_any_name() for port in compiled.inputs]
    request = compiled.create_infer_request()
    inputs = [{n: feed[n] if n in feed else np.zeros_like(feed["input_ids"]) for n in names} for feed in feeds]
    for feed in inputs:
        request.infer(feed)
    spent: collections.Counter = collections.Counter()
    started = time.perf_counter()
    for feed in inputs:
        request.infer(feed)
        for info in request.profiling_info:
            spent[(info.node_type, info.exec_type)] += info.real_time.total_seconds()
    return {"wall_s": time.perf_counter() - started, "ops": spent}


def batches(tokenizer: Any, texts: list, pairs: bool) -> list[dict[str, np.ndarray]]:
    args = (lambda part: ([q for q, _ in part], [p for _, p in part])) if pairs else (lambda part: (part,))
    out = []
    for start in range(0, len(texts), BATCH):
        encoded = tokenizer(
            *args(texts[start : start + BATCH]), padding=True, truncation=True, max_length=256, return_tensors="np"
        )
        out.append({k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()})
    return out


def main() -> int:
    if not (DATA / "corpus.jsonl").is_file():
        print(f"bench_openvino_profile: msmarco-dl20 not found in {DATA}; nothing to do")
        return 0
    from transformers import AutoTokenizer

    data = read_data(4)
    passages = sorted(list(data["passages"].values())[:256], key=len)
    pairs = sorted(
        ((data["queries"][q], data["passages"][d]) for q in data["qids"] for d in data["top"][q][:64]),
        key=lambda pair: len(pair[0]) + len(pair[1]),
    )
    ce_dir = benchmark_cross_encoder(cache_root() / "bench" / "minilm-cross-encoder")
    inputs = {
        "bi-encoder": batches(AutoTokenizer.from_pretrained(minilm_path()), passages, False),
        "cross-encoder": batches(AutoTokenizer.from_pretrained(str(ce_dir)), pairs, True),
    }
    rows = []
    for stage, feeds in inputs.items():
        for backend in BACKENDS:
            measured = profile(exported(stage, backend, ce_dir), backend, feeds)
            total = sum(measured["ops"].values())
            int8 = sum(v for (_, kernel), v in measured["ops"].items() if "i8" in kernel.lower())
            top = [
                {"op": op, "kernel": kernel, "share": round(v / total, 3)}
                for (op, kernel), v in measured["ops"].most_common(6)
            ]
            rows.append(
                {
                    "stage": stage,
                    "backend": backend,
                    "wall_s": round(measured["wall_s"], 2),
                    "int8_kernel_share": round(int8 / total, 3),
                    "top": top,
                }
            )
    where = f"{machine()}, load average {os.getloadavg()[0]:.1f} at the end"
    report = {"created_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": where, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "openvino_profile.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Where OpenVINO spends its time (benchmarks/bench_openvino_profile.py)",
        "",
        f"{where}; 256 passages and 256 query-passage pairs, batches of {BATCH}, one latency request.",
        "",
        "| model | backend | seconds | in int8 kernels | largest (operation / kernel: share) |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        largest = "; ".join(f"{t['op']} / {t['kernel']}: {t['share']:.0%}" for t in row["top"])
        lines.append(
            f"| {row['stage']} | {row['backend']} | {row['wall_s']} | {row['int8_kernel_share']:.0%} | {largest} |"
        )
    (RESULTS / "openvino_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
