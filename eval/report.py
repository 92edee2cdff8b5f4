"""Write an `EvalReport` out: the terminal table, a JSON file, one TREC run per system, a per-query CSV, plots."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from twostage.eval.harness import EvalReport, SystemResult
from twostage.eval.metrics import format_table
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
    if result.timings is None or not result.timings.stages:
        return None, None
    total = result.timings.summary()["total"]
    return _finite(total["median_ms"]), _finite(total["p95_ms"])


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
    header = (f"{report.dataset}: {report.n_queries} queries, {docs}relevant = label >= {report.rel_threshold} "
              f"(nDCG graded)\nbi-encoder {encoder}; reranker {reranker}")
    columns = ["system", *TABLE_MEASURES, "p rand", "p t-test", "median ms", "p95 ms"]
    table = format_table(table_rows(report), columns=columns, column_digits={"median ms": 1, "p95 ms": 1})
    notes = [f"p: paired two-sided randomization test ({report.config.get('significance', {}).get('n_resamples')}"
             f" resamples) and paired t-test on {SIGNIFICANCE_MEASURE} against {report.baseline}, "
             f"{report.n_queries} queries.",
             "latency: per query, one at a time, encode + search + rerank: median and p95 on "
             f"{report.versions.get('cpus', '?')} CPUs (load average at the end "
             f"{report.versions.get('load_average_1_5_15min', '?')}).",
             f"MRR, R and MAP count label >= {report.rel_threshold}; nDCG uses the graded labels."]
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
            "metrics": result.metrics,
            "timings_ms": None if result.timings is None else result.timings.summary(),
            "latency_ms": {"median": median, "p95": p95},
            "vs_baseline": {m: {"baseline": report.baseline, "delta": c.delta, "p_randomization": c.p_randomization,
                                "p_ttest": _finite(c.p_ttest), "n": c.n} for m, c in result.vs_baseline.items()},
        }
    return {
        "dataset": {"name": report.dataset, "source": report.dataset_source, "queries": report.n_queries,
                    "documents": report.n_documents, "rel_threshold": report.rel_threshold},
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
    """`dense+rerank@20` -> `dense+rerank@20.trec` (system names hold only letters, digits, `+` and `@`)."""
    return f"{system}.trec"


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


def write_report(report: EvalReport, out_dir: str | Path, *, runs: bool = True, per_query: bool = True,
                 plots: bool = True) -> dict[str, Path]:
    """Write every output into `out_dir`; returns what was written, by kind."""
    from twostage.eval.plots import plot_quality_vs_depth, plot_quality_vs_latency

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / RESULTS_JSON, "table": out / TABLE_TXT}
    write_json(report, written["json"])
    written["table"].write_text(format_report_table(report) + "\n", encoding="utf-8")
    if runs:
        written["runs"] = out / RUNS_DIR
        write_runs(report, written["runs"])
    if per_query:
        written["per_query"] = out / PER_QUERY_CSV
        write_per_query_csv(report, written["per_query"])
    if plots:
        if plot_quality_vs_depth(report, out / DEPTH_PLOT):
            written["depth_plot"] = out / DEPTH_PLOT
        if plot_quality_vs_latency(report, out / LATENCY_PLOT):
            written["latency_plot"] = out / LATENCY_PLOT
    return written
