"""Indexing as a user runs it: whole ``twostage index`` processes against plain sentence-transformers + FAISS and
against the encoder alone, side by side in one run (issue 25).

    python benchmarks/bench_index.py                       # 1,000 dl20 passages, 3 rounds; large run 100,000
    python benchmarks/bench_index.py --large 20000 --runs 1  # what time allows (the report says which size ran)

Cases, each a fresh process, the cases taking turns in every round so that load from other processes spreads over
all of them (median of the rounds reported):

- ``twostage index`` of the first ``--passages`` msmarco-dl20 passages, default backend (auto), model exports and
  backend choice warm, embedding cache fresh; with and without ``--store-tokens``;
- plain ``SentenceTransformer.encode`` (batch 32, normalised) + ``faiss.IndexFlatIP`` written to disk, its own process;
- the encoder alone on twostage's backend: the same process start, tokenizer and exported model, no storage;
- ``--large`` passages made by repeating dl20 (each copy's ids and texts marked with its number, so no copy is an
  embedding-cache hit): ``twostage index`` with and without ``--store-tokens`` against the encoder alone, and peak
  memory at a quarter of that size and at the full size (flat = the pipeline holds no more for more passages);
- the first ``twostage index`` of examples/corpus.jsonl on an empty cache (no export, no choice): wall and peak memory.

Peak memory is the process tree's proportional set size (children included: a first run exports in a child; shared
pages counted once), sampled every 100 ms. Results go to benchmarks/results/index.json and index.md with the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # noqa: E402
from common import DATA_ROOT, REPO, RESULTS, machine, minilm_path  # noqa: E402  (first: repo importable, hub off)

#: the issue's targets
TARGETS = {
    "index": 4.0,
    "index --store-tokens": 3.5,
    "large share of encoder": 0.9,
    "first run s": 15.0,
    "first MB": 1024,
}
#: where the encoder alone reaches this ratio, the absolute targets apply; elsewhere 80% of the encoder's ratio
ENCODER_BAR = 5.0
BASELINE = """
import json, sys
import faiss
from sentence_transformers import SentenceTransformer
texts = [json.loads(line)["text"] for line in open(sys.argv[1], encoding="utf-8")]
model = SentenceTransformer(sys.argv[2], device="cpu")
vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
index = faiss.IndexFlatIP(vectors.shape[1])
index.add(vectors)
faiss.write_index(index, sys.argv[3])
"""
ENCODER_ALONE = """
import json, sys, time
from twostage.retriever.biencoder import BiEncoder
encoder = BiEncoder(sys.argv[2], backend="auto", cache=None)
assert encoder.light is not None, "no torch-free model for this backend"
from twostage.runtime.light_encode import encode_passages
chunk, done = [], 0
def flush():
    global done
    encode_passages(encoder.light, chunk, batch_size=32, normalize=True, tokens=sys.argv[3] == "tokens")
    done += len(chunk)
    chunk.clear()
for line in open(sys.argv[1], encoding="utf-8"):
    chunk.append(json.loads(line)["text"])
    if len(chunk) == 256:
        flush()
flush()
print(json.dumps({"backend": encoder.backend_tag, "passages": done}))
"""


def run_measured(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command``; its wall time, the peak resident memory of its process tree, its exit code and output."""
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(_pss(p) for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - started
    out, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the tree's CPU time: children reap their own children
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({proc.returncode}): {err.strip()[-800:]}")
    return {
        "seconds": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_mb": round(peak / 2**20),
        "stdout": out,
        "stderr": err,
    }


def _pss(process: psutil.Process) -> int:
    """A process's proportional set size: pages shared with its parent (a fork not yet exec'd, as a library's helper
    starts) count once across the tree, which resident size would count in every process."""
    try:
        return process.memory_full_info().pss
    except (psutil.Error, AttributeError):
        return 0


def write_corpus(source: Path, path: Path, size: int) -> Path:
    """The first ``size`` passages of ``source``, repeated as often as needed: copy ``n`` > 0 gets ids ``ID~n`` and
    its texts a trailing ``(n)``, so no copy is an embedding-cache hit."""
    passages = [json.loads(line) for line in source.open(encoding="utf-8")]
    with path.open("w", encoding="utf-8") as out:
        for i in range(size):
            copy, doc = divmod(i, len(passages))
            p = passages[doc]
            row = (
                {"id": p["id"], "text": p["text"]}
                if copy == 0
                else {"id": f"{p['id']}~{copy}", "text": f"{p['text']} ({copy})"}
            )
            out.write(json.dumps(row) + "\n")
    return path


def warm_cache(cache: Path, env: dict[str, str], corpus: Path, work: Path) -> None:
    """Exports and the backend choice built once (a throwaway index); the embedding cache then removed."""
    run_measured(twostage_index(corpus, work / "warm", []), {**env, "TWOSTAGE_CACHE_DIR": str(cache)})
    shutil.rmtree(work / "warm", ignore_errors=True)


def fresh_embeddings(cache: Path, work: Path, name: str) -> dict[str, str]:
    """A cache root sharing ``cache``'s exports, fingerprints and backend choice, with an empty embedding cache."""
    root = work / f"cache-{name}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for part in cache.iterdir():
        if part.is_dir():
            (root / part.name).symlink_to(part)
    return {"TWOSTAGE_CACHE_DIR": str(root)}


def twostage_index(corpus: Path, directory: Path, extra: list[str], quiet: bool = True) -> list[str]:
    command = [sys.executable, "-m", "twostage.cli", "index", str(corpus), "-i", str(directory), "--overwrite"]
    return [*command, *(["-q"] if quiet else []), *extra]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TWOSTAGE_DATA", DATA_ROOT)))
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="rounds of the 1,000-passage cases")
    parser.add_argument("--large", type=int, default=100_000, help="passages of the large run (0: skip it)")
    parser.add_argument("--large-tokens", action="store_true", help="also run the large size with --store-tokens")
    parser.add_argument("--skip-first-run", action="store_true")
    parser.add_argument(
        "--only-large",
        action="store_true",
        help="the large run alone (no first run, no 1,000-passage rounds), written to index-large.json / .md",
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--stem", default=None, help="results file name (default: index, or index-large with --only-large)"
    )
    args = parser.parse_args()
    stem = args.stem or ("index-large" if args.only_large else "index")
    source = args.data / "msmarco-dl20" / "corpus.jsonl"
    if not source.is_file():
        print(f"no {source}: nothing to measure", file=sys.stderr)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-index-"))
    work.mkdir(parents=True, exist_ok=True)
    model = minilm_path()
    env = {k: v for k, v in os.environ.items() if k != "TWOSTAGE_BACKEND"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cache = work / "model-cache"
    report: dict = {
        "machine": machine(),
        "load_before": os.getloadavg(),
        "passages": args.passages,
        "rounds": 0 if args.only_large else args.runs,
        "command": " ".join(["python benchmarks/bench_index.py", *sys.argv[1:]]),
    }
    started = time.time()

    if not args.skip_first_run and not args.only_large:  # first: nothing in any cache
        first_cache = work / "first-cache"
        shutil.rmtree(first_cache, ignore_errors=True)
        result = run_measured(
            twostage_index(REPO / "examples" / "corpus.jsonl", work / "first", [], quiet=False),  # its notice too
            {**env, "TWOSTAGE_CACHE_DIR": str(first_cache)},
        )
        report["first_run"] = {
            "seconds": result["seconds"],
            "cpu_s": result["cpu_s"],
            "peak_mb": result["peak_mb"],
            "notice": [line for line in result["stderr"].splitlines() if line.startswith("--backend auto")],
        }
        print(f"first run: {result['seconds']} s, {result['peak_mb']} MB", file=sys.stderr)
        save(report, args.out, started, stem)

    corpus = write_corpus(source, work / "corpus-small.jsonl", args.passages)
    warm_cache(cache, env, write_corpus(source, work / "corpus-warm.jsonl", 50), work)
    cases = {
        "twostage index": lambda n: twostage_index(corpus, work / "idx", []),
        "twostage index --store-tokens": lambda n: twostage_index(corpus, work / "idx-tok", ["--store-tokens"]),
        "sentence-transformers + IndexFlatIP": lambda n: [
            sys.executable,
            "-c",
            BASELINE,
            str(corpus),
            model,
            str(work / "st.faiss"),
        ],
        "encoder alone": lambda n: [sys.executable, "-c", ENCODER_ALONE, str(corpus), model, "-"],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    peaks: dict[str, list[int]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(0 if args.only_large else args.runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            result = run_measured(cases[name](r), {**env, **fresh_embeddings(cache, work, f"{r}-{len(times[name])}")})
            times[name].append(result["seconds"])
            peaks[name].append(result["peak_mb"])
            cpus[name].append(result["cpu_s"])
            if name == "encoder alone":
                report["backend"] = json.loads(result["stdout"].strip().splitlines()[-1])["backend"]
            print(f"round {r + 1}: {name}: {result['seconds']} s, {result['peak_mb']} MB", file=sys.stderr)
    median = {name: statistics.median(values) for name, values in times.items() if values}
    base_name = "sentence-transformers + IndexFlatIP"
    base = median.get(base_name, 0.0)
    report["small"] = {
        name: {
            "seconds": times[name],
            "median_s": median[name],
            "vs_baseline": round(base / median[name], 2),
            "cpu_s": cpus[name],
            "cpu_vs_baseline": round(statistics.median(cpus[base_name]) / statistics.median(cpus[name]), 2),
            "peak_mb": max(peaks[name]),
        }
        for name in names
        if name in median
    }
    save(report, args.out, started, stem)

    if args.large:
        big = write_corpus(source, work / "corpus-large.jsonl", args.large)
        quarter = write_corpus(source, work / "corpus-quarter.jsonl", max(1, args.large // 4))
        large: dict = {"passages": args.large}
        runs = [("encoder alone", [sys.executable, "-c", ENCODER_ALONE, str(big), model, "-"])]
        runs.append(("twostage index", twostage_index(big, work / "big", [])))
        runs.append(("twostage index (quarter size)", twostage_index(quarter, work / "quarter", [])))
        if args.large_tokens:
            runs.append(("encoder alone, tokens", [sys.executable, "-c", ENCODER_ALONE, str(big), model, "tokens"]))
            runs.append(("twostage index --store-tokens", twostage_index(big, work / "big-tok", ["--store-tokens"])))
            runs.append(
                (
                    "twostage index --store-tokens (quarter size)",
                    twostage_index(quarter, work / "quarter-tok", ["--store-tokens"]),
                )
            )
        for name, command in runs:
            n = args.large // 4 if "quarter" in name else args.large
            result = run_measured(command, {**env, **fresh_embeddings(cache, work, name.replace(" ", "_"))})
            if name == "encoder alone":
                report["backend"] = json.loads(result["stdout"].strip().splitlines()[-1])["backend"]
            large[name] = {
                "passages": n,
                "seconds": result["seconds"],
                "per_second": round(n / result["seconds"], 1),
                "cpu_s": result["cpu_s"],
                "per_cpu_second": round(n / max(result["cpu_s"], 1e-9), 1),
                "peak_mb": result["peak_mb"],
            }
            print(f"large: {name}: {result['seconds']} s, {result['peak_mb']} MB", file=sys.stderr)
            report["large"] = large
            save(report, args.out, started, stem)
        alone = large["encoder alone"]["per_second"]
        large["share_of_encoder"] = round(large["twostage index"]["per_second"] / alone, 3)
        large["share_of_encoder_cpu"] = round(
            large["twostage index"]["per_cpu_second"] / large["encoder alone"]["per_cpu_second"], 3
        )
        if args.large_tokens:
            tokens_rate = large["twostage index --store-tokens"]["per_second"]
            large["share_of_encoder_tokens"] = round(tokens_rate / alone, 3)
            large["share_of_token_encoder"] = round(tokens_rate / large["encoder alone, tokens"]["per_second"], 3)
        report["large"] = large

    save(report, args.out, started, stem)
    print(markdown(report))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def applicable_targets(small: dict) -> dict[str, float]:
    """Issue 25's ratio targets as they apply on the measured CPU: 4x and 3.5x where the encoder alone reaches 5x,
    else 80% of the encoder alone's ratio there."""
    if "encoder alone" not in small:
        return {}
    alone = small["encoder alone"]["vs_baseline"]
    if alone >= ENCODER_BAR:
        return {"twostage index": TARGETS["index"], "twostage index --store-tokens": TARGETS["index --store-tokens"]}
    return {"twostage index": 0.8 * alone, "twostage index --store-tokens": 0.8 * alone}


def save(report: dict, out: Path, started: float, stem: str = "index") -> None:
    """Write STEM.json and STEM.md as they stand (after each part, so a run cut short keeps what it measured)."""
    report["load_after"] = os.getloadavg()
    report["minutes"] = round((time.time() - started) / 60, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown(report), encoding="utf-8")


def markdown(report: dict) -> str:
    """The results as the Markdown page the docs quote."""
    load = lambda pair: ", ".join(f"{v:.1f}" for v in pair)  # noqa: E731
    lines = [
        "# Indexing: whole processes (benchmarks/bench_index.py)",
        "",
        f"CPU: {report['machine']}; twostage's backend: {report.get('backend', '?')}; load average before "
        f"{load(report['load_before'])}, after {load(report['load_after'])}; {report['minutes']} min.",
    ]
    if report.get("small"):
        lines += [
            "",
            f"## {report['passages']:,} msmarco-dl20 passages, median of {report['rounds']} rounds (model cache warm, "
            "embedding cache fresh)",
            "",
            "| process | median s | vs sentence-transformers + FAISS | target | CPU s (median) | vs, in CPU time | "
            "peak MB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    targets = applicable_targets(report.get("small", {}))
    for name, row in report.get("small", {}).items():
        target = "–"
        if name in targets:
            met = "met" if row["vs_baseline"] >= targets[name] - 1e-9 else "not met"
            target = f"≥ {targets[name]:.2f}x ({met})"
        cpu = statistics.median(row["cpu_s"])
        lines.append(
            f"| {name} | {row['median_s']:.2f} | {row['vs_baseline']:.2f}x | {target} | {cpu:.1f} | "
            f"{row['cpu_vs_baseline']:.2f}x | {row['peak_mb']} |"
        )
    if "encoder alone" in report.get("small", {}):
        alone = report["small"]["encoder alone"]["vs_baseline"]
        lines += [
            "",
            f"Targets on this CPU: the encoder alone reaches {alone:.2f}x here, "
            + (
                "so the issue's own ratios (≥ 4x, ≥ 3.5x with tokens) apply."
                if alone >= ENCODER_BAR
                else f"below {ENCODER_BAR:g}x, so the target is 80% of that ratio ({0.8 * alone:.2f}x) for both rows."
            ),
        ]
    if "large" in report:
        large = report["large"]
        lines += [
            "",
            f"## {large['passages']:,} passages (dl20 repeated, each copy marked)",
            "",
            "| process | passages | s | passages/s | CPU s | passages per CPU s | peak MB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, row in large.items():
            if isinstance(row, dict):
                lines.append(
                    f"| {name} | {row['passages']:,} | {row['seconds']:.1f} | {row['per_second']:.1f} | "
                    f"{row['cpu_s']:.1f} | {row['per_cpu_second']:.1f} | {row['peak_mb']} |"
                )
        if "share_of_encoder" in large:
            lines += [
                "",
                f"Throughput of `twostage index` / the encoder alone: {large['share_of_encoder']:.3f} in wall time "
                f"(target ≥ 0.9), {large['share_of_encoder_cpu']:.3f} in CPU time.",
            ]
        if "share_of_encoder_tokens" in large:
            lines.append(
                f"With `--store-tokens`, against the encoder alone: {large['share_of_encoder_tokens']:.3f}; against "
                f"the encoder alone making the same tokens: {large['share_of_token_encoder']:.3f}."
            )
    if "first_run" in report:
        first = report["first_run"]
        lines += [
            "",
            "## First `twostage index` of examples/corpus.jsonl on an empty cache",
            "",
            f"{first['seconds']:.1f} s wall (target ≤ 15 s), {first['cpu_s']:.1f} s of CPU, peak {first['peak_mb']} MB "
            "(target ≤ 1,024 MB). "
            f"Its notice: {' '.join(first['notice'])}",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
