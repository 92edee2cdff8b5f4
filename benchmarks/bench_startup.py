"""Start-up time of the command line: wall time of fresh ``twostage search`` processes on the example collection.

    python benchmarks/bench_startup.py            # writes benchmarks/results/startup.json and startup.md
    python benchmarks/bench_startup.py --runs 3   # fewer processes per case

The collection (examples/corpus.jsonl with stored MaxSim tokens, default backend: ``auto``'s choice) is built once
into runs/bench-startup/, and one search warms the model cache (the exported model, the fingerprint) before timing.
Each case then runs ``--runs`` fresh processes, the cases taking turns so that a change in the machine's load spreads
over all of them; the median is reported beside the issue's target. ``--backend torch`` is the path every search took
before (torch and sentence-transformers imported), measured in the same run for comparison on a copy built with
``--backend torch`` (runs/bench-startup-torch/), since a collection built by an int8 backend is always searched with
its own int8 model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, RESULTS  # noqa: E402  (first: repo importable, hub off)

from twostage.runtime.cpu import cpu_info  # noqa: E402

#: the example collection as ``twostage index`` builds it by default, and built on torch (float vectors)
COLLECTIONS = {"default": REPO / "runs" / "bench-startup", "torch": REPO / "runs" / "bench-startup-torch"}
QUERY = "How many people live in Berlin?"
#: (name, arguments after ``twostage search DIR``, target seconds or None, expected exit code, collection)
CASES = (
    ("maxsim over stored tokens", [QUERY], 1.5, 0, "default"),
    ("--no-rerank", [QUERY, "--no-rerank"], 1.2, 0, "default"),
    ("empty query rejected", [""], 0.8, 2, "default"),
    ("--backend torch (the previous path)", [QUERY, "--backend", "torch"], None, 0, "torch"),
)


def twostage_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "twostage.cli", *args]


def environment() -> dict[str, str]:
    """The user's environment without a backend override (the test suite sets one)."""
    return {k: v for k, v in os.environ.items() if k != "TWOSTAGE_BACKEND"}


def prepare() -> str:
    """Build the example collections once and run one search per case, so the model cache is warm; returns the
    backend that built the default collection."""
    for key, path in COLLECTIONS.items():
        if not (path / "manifest.json").is_file():
            shutil.rmtree(path, ignore_errors=True)
            backend = [] if key == "default" else ["--backend", key]
            subprocess.run(
                twostage_cmd(
                    "index",
                    str(REPO / "examples" / "corpus.jsonl"),
                    "--index",
                    str(path),
                    "--store-tokens",
                    "-q",
                    *backend,
                ),
                check=True,
                env=environment(),
            )
    for _, args, _, code, key in CASES:
        done = subprocess.run(
            twostage_cmd("search", str(COLLECTIONS[key]), *args), capture_output=True, env=environment()
        )
        assert done.returncode == code, done.stderr.decode()
    manifest = json.loads((COLLECTIONS["default"] / "manifest.json").read_text(encoding="utf-8"))
    return str(manifest.get("extra", {}).get("backend", "unknown"))


def timed(args: list[str], code: int, collection: Path) -> float:
    """Wall seconds of one fresh ``twostage search`` process."""
    started = time.perf_counter()
    done = subprocess.run(twostage_cmd("search", str(collection), *args), capture_output=True, env=environment())
    elapsed = time.perf_counter() - started
    assert done.returncode == code, done.stderr.decode()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per case (default 5)")
    args = parser.parse_args()
    default_backend = prepare()
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name, *_ in CASES}
    for _ in range(args.runs):
        for name, case_args, _, code, key in CASES:
            times[name].append(timed(case_args, code, COLLECTIONS[key]))
    load_after = os.getloadavg()
    cpu = cpu_info()
    report = {
        "cpu": cpu.model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "runs": args.runs,
        "default_collection_backend": default_backend,
        "cases": [
            {
                "case": name,
                "command": f"twostage search DIR {' '.join(repr(a) if not a or ' ' in a else a for a in case_args)}",
                "median_s": round(statistics.median(times[name]), 3),
                "min_s": round(min(times[name]), 3),
                "max_s": round(max(times[name]), 3),
                "target_s": target,
                "met": None if target is None else statistics.median(times[name]) <= target,
                "seconds": [round(t, 3) for t in times[name]],
            }
            for name, case_args, target, _, _ in CASES
        ],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# CLI start-up: fresh `twostage search` processes on the example collection",
        "",
        f"{cpu.model}, {os.cpu_count()} cores; Python {report['python']}; load average "
        f"{' '.join(map(str, report['load_average_before']))} before, "
        f"{' '.join(map(str, report['load_average_after']))} after. Median of {args.runs} fresh processes per case, "
        f"cases taking turns; warm model cache; the default collection was built by `--backend auto`'s choice, "
        f"{default_backend} (the torch case searches a copy built with `--backend torch`). "
        "`python benchmarks/bench_startup.py`.",
        "",
        "| case | median s | min–max s | target | met |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for case in report["cases"]:
        target = f"≤ {case['target_s']}" if case["target_s"] is not None else "—"
        met = "—" if case["met"] is None else ("yes" if case["met"] else "no")
        lines.append(
            f"| {case['case']} | {case['median_s']:.2f} | {case['min_s']:.2f}–{case['max_s']:.2f} | {target} | {met} |"
        )
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
