"""Where ``twostage index --store-tokens`` spends its CPU beside the encoder: each thread's CPU seconds (from
``/proc/self/task``, Python threads by name, the rest as native) in one ``twostage index`` process with and without
``--store-tokens``, side by side (Linux only).

    python benchmarks/probe_index_threads.py                    # the first 5,000 msmarco-dl20 passages
    python benchmarks/probe_index_threads.py --passages 3000 --rounds 2

Each process indexes into a fresh collection with an empty embedding cache (model exports warm, made by a first
unmeasured run). Results: benchmarks/results/index-threads.json and .md (``--stem`` to rename).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA_ROOT, REPO, RESULTS, machine, save_results

#: the child: ``twostage index`` in this process, a thread sampling every thread's CPU time until it exits
CHILD = """
import atexit, json, os, sys, threading, time
clock, names, cpu = os.sysconf("SC_CLK_TCK"), {}, {}
def sample():
    while True:
        names.update({t.native_id: t.name for t in threading.enumerate() if t.native_id})
        for tid in os.listdir("/proc/self/task"):
            try:
                fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu[int(tid)] = (int(fields[11]) + int(fields[12])) / clock
        time.sleep(0.2)
threading.Thread(target=sample, name="probe", daemon=True).start()
def report():
    by_name = {}
    for tid, seconds in cpu.items():
        name = names.get(tid) or ("MainThread" if tid == os.getpid() else "native")
        by_name[name] = by_name.get(name, 0.0) + seconds
    print(json.dumps(by_name), file=sys.stderr)
atexit.register(report)
from twostage.cli import main
sys.argv[0] = "twostage"
main()
"""
CASES = {"twostage index": [], "twostage index --store-tokens": ["--store-tokens"]}


def run(corpus: Path, index: Path, extra: list[str], env: dict[str, str]) -> dict:
    """One child process: its wall seconds and each thread group's CPU seconds."""
    shutil.rmtree(index, ignore_errors=True)
    for stale in Path(env["TWOSTAGE_CACHE_DIR"]).glob("embeddings.sqlite*"):
        stale.unlink()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "index", str(corpus), "--index", str(index), "-q", *extra],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"twostage index failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    threads = json.loads(done.stderr.strip().splitlines()[-1])
    threads.pop("probe", None)
    return {"seconds": round(time.perf_counter() - started, 2), "cpu_s": {k: round(v, 1) for k, v in threads.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_ROOT / "msmarco-dl20")
    parser.add_argument("--passages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stem", default="index-threads")
    args = parser.parse_args()
    source = args.data / "corpus.jsonl"
    if not source.is_file() or not Path("/proc/self/task").is_dir():
        print(f"no {source} or no /proc: nothing to measure", file=sys.stderr)
        return 0
    work = Path(tempfile.mkdtemp(prefix="probe-index-threads-"))
    corpus = work / "corpus.jsonl"
    corpus.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[: args.passages]) + "\n")
    env = {**os.environ, "TWOSTAGE_CACHE_DIR": str(work / "cache")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    run(corpus, work / "warm", [], env)  # exports the model into this cache: not measured
    results: dict[str, list[dict]] = {name: [] for name in CASES}
    for r in range(args.rounds):
        for name in CASES if r % 2 == 0 else list(CASES)[::-1]:
            results[name].append(run(corpus, work / "index", CASES[name], env))
    shutil.rmtree(work, ignore_errors=True)
    plain, tokens = (results[name][-1] for name in CASES)
    groups = sorted(set(plain["cpu_s"]) | set(tokens["cpu_s"]))
    extra = {g: round(tokens["cpu_s"].get(g, 0.0) - plain["cpu_s"].get(g, 0.0), 1) for g in groups}
    report = {
        "machine": machine(),
        "passages": args.passages,
        "runs": results,
        "tokens_extra_cpu_s": extra,
        "tokens_extra_cpu_total_s": round(sum(extra.values()), 1),
        "tokens_extra_wall_s": round(tokens["seconds"] - plain["seconds"], 2),
        "command": " ".join(["python benchmarks/probe_index_threads.py", *sys.argv[1:]]),
    }
    lines = [
        "# CPU by thread: `twostage index` with and without `--store-tokens` (benchmarks/probe_index_threads.py)",
        "",
        f"CPU: {report['machine']}; {args.passages:,} msmarco-dl20 passages; the last round of {args.rounds}.",
        "",
        "| threads | " + " | ".join(f"{name}, CPU s" for name in CASES) + " | extra with tokens |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {g} | {plain['cpu_s'].get(g, 0.0)} | {tokens['cpu_s'].get(g, 0.0)} | {extra[g]:+} |" for g in groups),
        f"| wall s | {plain['seconds']} | {tokens['seconds']} | {report['tokens_extra_wall_s']:+} |",
        "",
        f"Extra CPU with tokens: {report['tokens_extra_cpu_total_s']} s in all.",
    ]
    save_results(RESULTS, args.stem, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
