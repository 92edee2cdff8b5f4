"""Write an `EvalReport` out: the terminal table, a JSON file, one TREC run per system, a per-query CSV, plots."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twostage.eval.errors import EvalInputError
from twostage.eval.harness import EvalReport, SystemResult
from twostage.eval.metrics import format_table
from twostage.eval.textio import os_reason
from twostage.eval.timing import latency_ms as timing_latency_ms
from twostage.eval.trec import write_run

TABLE_MEASURES = ("nDCG@10", "MRR@10", "R@100", "R@1000", "MAP")
SIGNIFICANCE_MEASURE = "nDCG@10"
RESULTS_JSON = "results.json"
TABLE_TXT = "table.txt"
PER_QUERY_CSV = "per_query.csv"
RUNS_DIR = "runs"
DEPTH_PLOT = "quality_vs_depth.png"
LATENCY_PLOT = "quality_vs_latency.png"


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def latency_ms(result: SystemResult) -> tuple[float | None, float | None]:
    """Median and p95 end-to-end latency per query in ms, or (None, None) where it was not measured."""
    return timing_latency_ms(result.timings)


def table_rows(report: EvalReport) -> list[dict[str, Any]]:
    """One row per system: the table's metrics, nDCG@10 p-values against the baseline, latency."""
    rows = []
    for result in report.systems:
        row: dict[str, Any] = {"system": result.name}
        row.update({m: result.metrics.get(m) for m in TABLE_MEASURES})
        test = result.vs_baseline.get(SIGNIFICANCE_MEASURE)
        row["p rand"] = None if test is None else test.p_randomization
        row["p t-test"] = None if test is None else _finite(test.p_ttest)
        row["median ms"], row["p95 ms"] = latency_ms(result)
        rows.append(row)
    return rows


def format_report_table(report: EvalReport) -> str:
    """The table printed in the terminal (and saved as table.txt), with a header and footnotes."""
    models = report.models
    encoder = models.get("bi_encoder", {}).get("name", "-")
    reranker = models.get("reranker", {}).get("name") or "none"
    docs = f"{report.n_documents} documents, " if report.n_documents else ""
    passages = (report.indexing or {}).get("passages")
    if report.n_documents and passages and passages != report.n_documents:  # long documents: split, ranked by best
        truncated = report.indexing.get("truncated") or 0
        docs = f"{report.n_documents} documents in {passages} passages ({truncated} truncated), "
    header = (
        f"{report.dataset}: {report.n_queries} queries, {docs}relevant = label >= {report.rel_threshold} "
        f"(nDCG graded)\nbi-encoder {encoder}; reranker {reranker}"
    )
    columns = ["system", *TABLE_MEASURES, "p rand", "p t-test", "median ms", "p95 ms"]
    table = format_table(table_rows(report), columns=columns, column_digits={"median ms": 1, "p95 ms": 1})
    notes = [
        f"p: paired two-sided randomization test ({report.config.get('significance', {}).get('n_resamples')}"
        f" resamples) and paired t-test on {SIGNIFICANCE_MEASURE} against {report.baseline}, "
        f"{report.n_queries} queries.",
        "latency: per query, one at a time, encode + search + rerank: median and p95 on "
        f"{report.versions.get('cpus', '?')} CPUs (load average at the end "
        f"{report.versions.get('load_average_1_5_15min', '?')}).",
        f"MRR, R and MAP count label >= {report.rel_threshold}; nDCG uses the graded labels.",
    ]
    if any(r.first_stage == "run" and r.depth for r in report.systems):
        notes.append("run+rerank latency is the reranker's only (the given run's first stage was not timed).")
    if any(r.depth for r in report.systems):
        notes.append("rerank@d: the top d candidates reranked; the rest keep their first-stage order beneath.")
    return "\n".join([header, "", table, "", *notes])


def report_to_dict(report: EvalReport) -> dict[str, Any]:
    """Everything but the runs and per-query scores: dataset, models, config, metrics, tests, timings, versions."""
    systems = {}
    for result in report.systems:
        median, p95 = latency_ms(result)
        systems[result.name] = {
            "first_stage": result.first_stage,
            "rerank_depth": result.depth,
            "run_file": f"{RUNS_DIR}/{run_file_name(result.name)}",
            "metrics": result.metrics,
            "timings_ms": None if result.timings is None else result.timings.summary(),
            "latency_ms": {"median": median, "p95": p95},
            "vs_baseline": {
                m: {
                    "baseline": report.baseline,
                    "delta": c.delta,
                    "p_randomization": c.p_randomization,
                    "p_ttest": _finite(c.p_ttest),
                    "n": c.n,
                }
                for m, c in result.vs_baseline.items()
            },
        }
    return {
        "dataset": {
            "name": report.dataset,
            "source": report.dataset_source,
            "queries": report.n_queries,
            "documents": report.n_documents,
            "rel_threshold": report.rel_threshold,
        },
        "models": report.models,
        "depths": report.depths,
        "baseline": report.baseline,
        "measures": report.measures,
        "systems": systems,
        "config": report.config,
        "indexing": report.indexing,
        "notices": report.notices,
        "versions": report.versions,
        "elapsed_s": round(report.elapsed_s, 3),
        "created_at": report.created_at,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def write_json(report: EvalReport, path: Path) -> None:
    """`report_to_dict` as indented JSON (NaN written as null)."""
    text = json.dumps(report_to_dict(report), indent=2, default=_json_default, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def run_file_name(system: str) -> str:
    """The file name of a system's run: `dense+rerank@20` -> `dense+rerank@20.trec`. A name holding anything but
    letters, digits and `+ @ = . _ - ~` (the `/` and `:` of lever options) has each such character percent-encoded,
    so the name stays one reversible file name: `dense/prf=3:0.5` -> `dense%2Fprf=3%3A0.5.trec`."""
    return f"{quote(system, safe='+@=')}.trec"


def write_runs(report: EvalReport, directory: Path) -> dict[str, Path]:
    """One TREC run per system, tagged with the system name; returns {system: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for result in report.systems:
        path = directory / run_file_name(result.name)
        write_run(result.run, path, tag=result.name)
        paths[result.name] = path
    return paths


def write_per_query_csv(report: EvalReport, path: Path) -> None:
    """Rows `qid, system, <measure>...`, for every system and judged query (full float precision)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["qid", "system", *report.measures])
        for result in report.systems:
            for qid, values in result.per_query.items():
                writer.writerow([qid, result.name, *(repr(values[m]) for m in report.measures)])


def _previous_outputs(out: Path) -> set[str]:
    """The outputs an earlier report in ``out`` recorded (its results.json's run files, and the plots), relative to
    ``out``; empty when there is none or it cannot be read."""
    try:
        systems = json.loads((out / RESULTS_JSON).read_text(encoding="utf-8")).get("systems", {})
        runs = {entry.get("run_file") or f"{RUNS_DIR}/{run_file_name(name)}" for name, entry in systems.items()}
    except (OSError, ValueError, AttributeError):
        return set()
    return {
        name
        for name in runs | {DEPTH_PLOT, LATENCY_PLOT}
        if isinstance(name, str) and "/.." not in name and not name.startswith(("/", ".."))
    }


def write_report(
    report: EvalReport, out_dir: str | Path, *, runs: bool = True, per_query: bool = True, plots: bool = True
) -> dict[str, Path]:
    """Write every output into `out_dir`; returns what was written, by kind.

    Everything is first written into a hidden folder inside `out_dir` and moved into place only once all of it was
    written (results.json last), so a failure leaves the earlier outputs as they were and no half-written file; a
    folder or file that cannot be written is an EvalInputError naming it."""
    from twostage.eval.plots import plot_quality_vs_depth, plot_quality_vs_latency

    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".eval-", dir=out))
    except OSError as err:
        raise EvalInputError(f"cannot create the output folder: {os_reason(err)}", path=out) from None
    previous = _previous_outputs(out)  # what an earlier run left here: what this one does not rewrite goes
    try:
        files: dict[str, list[str]] = {}  # kind -> paths relative to the folder, in the order they are moved
        if runs:
            write_runs(report, stage / RUNS_DIR)
            files["runs"] = [f"{RUNS_DIR}/{run_file_name(r.name)}" for r in report.systems]
        if per_query:
            write_per_query_csv(report, stage / PER_QUERY_CSV)
            files["per_query"] = [PER_QUERY_CSV]
        if plots:
            if plot_quality_vs_depth(report, stage / DEPTH_PLOT):
                files["depth_plot"] = [DEPTH_PLOT]
            if plot_quality_vs_latency(report, stage / LATENCY_PLOT):
                files["latency_plot"] = [LATENCY_PLOT]
        (stage / TABLE_TXT).write_text(format_report_table(report) + "\n", encoding="utf-8")
        write_json(report, stage / RESULTS_JSON)
        files = {"json": [RESULTS_JSON], "table": [TABLE_TXT], **files}
        order = [name for kind in files if kind not in ("json", "table") for name in files[kind]]
        order += [TABLE_TXT, RESULTS_JSON]
        # what would stop a move is found before the first one
        blocked = ([out / RUNS_DIR] if runs and (out / RUNS_DIR).exists() and not (out / RUNS_DIR).is_dir() else []) + [
            out / name for name in order if (out / name).is_dir()
        ]
        if blocked:
            raise EvalInputError(
                "is in the way of an output file; move it away or choose another --out", path=blocked[0]
            )
        if runs:
            (out / RUNS_DIR).mkdir(exist_ok=True)
        for name in order:
            os.replace(stage / name, out / name)
        for name in previous - set(order):  # a run or plot of the earlier report, no longer true of this one
            (out / name).unlink(missing_ok=True)
    except OSError as err:  # named as the output it was to become, not the hidden folder it was written in
        where = str(err.filename).replace(str(stage), str(out), 1) if err.filename else out
        raise EvalInputError(f"cannot write the outputs: {os_reason(err)}", path=where) from None
    except EvalInputError as err:
        if str(stage) not in str(err):
            raise
        raise EvalInputError(str(err).replace(str(stage), str(out))) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing was written: the folder this call made goes too
    written = {kind: out / names[0] for kind, names in files.items()}
    if runs:
        written["runs"] = out / RUNS_DIR
    return written
