"""PNG plots of an `EvalReport` with matplotlib (Agg): quality against rerank depth, and against latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twostage.eval.harness import EvalReport, SystemResult
from twostage.eval.timing import latency_ms
from twostage.runtime.optional import require

PLOT_MEASURES = ("nDCG@10", "MRR@10")
COLORS = {"bm25": "#7f7f7f", "dense": "#1f77b4", "hybrid": "#2ca02c", "run": "#9467bd"}
RERANK_COLORS = {"dense": "#d62728", "run": "#ff7f0e"}


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "plots", "plotting an evaluation")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subtitle(report: EvalReport) -> str:
    encoder = report.models.get("bi_encoder", {}).get("name", "-").split("/")[-1]
    reranker = str(report.models.get("reranker", {}).get("name") or "none").split("/")[-1]
    return (
        f"{report.n_queries} queries, relevant = label >= {report.rel_threshold}; bi-encoder {encoder}, "
        f"reranker {reranker}"
    )


def _gain_is_significant(first: SystemResult | None, result: SystemResult, measure: str, alpha: float = 0.05) -> bool:
    """Whether reranking changed `measure` significantly against the first stage it reranked (randomization test)."""
    from twostage.eval.significance import compare

    if first is None or result is first:
        return False
    return compare(first.per_query, result.per_query, measure, n_resamples=5000).p_randomization < alpha


def _family_label(report: EvalReport, family: str) -> str:
    if family != "run":
        return family
    run = report.config.get("rerank_run")
    return f"run {Path(run).name}" if run else "given run"


def plot_quality_vs_depth(report: EvalReport, path: Path) -> bool:
    """nDCG@10 and MRR@10 against rerank depth (depth 0 = the first stage alone); False if nothing reranked."""
    by_name = {r.name: r for r in report.systems}
    families = [s for s in ("dense", "run") if any(r.first_stage == s and r.depth for r in report.systems)]
    if not families:
        return False
    plt = _pyplot()
    depths = sorted({r.depth for r in report.systems if r.depth})
    positions = {0: 0, **{d: i + 1 for i, d in enumerate(depths)}}
    fig, axes = plt.subplots(1, len(PLOT_MEASURES), figsize=(12, 5.5), sharex=True)
    for ax, measure in zip(axes, PLOT_MEASURES):
        for name in ("bm25", "hybrid"):
            if name in by_name:
                value = by_name[name].metrics[measure]
                ax.axhline(value, color=COLORS[name], linestyle="--", linewidth=1.4, label=f"{name} ({value:.3f})")
        values = {(f, r.depth or 0): r.metrics[measure] for f in families for r in report.systems if r.first_stage == f}
        for family in families:
            label = _family_label(report, family)
            first = by_name.get(family)
            points = [(positions[r.depth], r) for r in report.systems if r.first_stage == family and r.depth]
            if first is not None:
                base = first.metrics[measure]
                ax.axhline(
                    base,
                    color=COLORS[family],
                    linestyle="--",
                    linewidth=1.4,
                    label=f"{label}, first stage ({base:.3f})",
                )
                points.insert(0, (0, first))
            color = RERANK_COLORS[family]
            ax.plot(
                [x for x, _ in points],
                [r.metrics[measure] for _, r in points],
                color=color,
                linewidth=2,
                label=f"{label} + reranker",
            )
            for x, result in points:
                y = result.metrics[measure]
                # label above the point unless another family's point at this depth is higher
                above = all(v <= y for (f, d), v in values.items() if d == (result.depth or 0) and f != family)
                filled = result.depth is None or _gain_is_significant(first, result, measure)
                ax.plot(
                    x,
                    y,
                    "o",
                    markersize=8,
                    color=color if result.depth else COLORS[family],
                    markerfacecolor=None if filled else "white",
                )
                ax.annotate(
                    f"{y:.3f}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 9 if above else -15),
                    ha="center",
                    fontsize=8,
                    color=color,
                )
        ax.set_xticks(list(positions.values()))
        ax.set_xticklabels(["0\n(first stage)"] + [str(d) for d in depths])
        ax.set_xlabel("rerank depth (top-d candidates scored by the reranker)")
        ax.set_ylabel(measure)
        ax.set_title(measure)
        ax.grid(True, alpha=0.3)
        ax.margins(y=0.12)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(
        f"{report.dataset}: quality against rerank depth\n{_subtitle(report)}\nfilled marker: "
        "significant change from its own first stage (paired randomization test, p < 0.05); "
        "hollow: not significant",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _latency_colors(results: list[SystemResult]) -> dict[str, object]:
    """First stages in their fixed colours; reranked systems in darkening reds as the depth grows."""
    plt = _pyplot()
    reranked = sorted(r.depth for r in results if r.depth)
    shades = {d: plt.cm.Reds(0.45 + 0.5 * i / max(len(reranked) - 1, 1)) for i, d in enumerate(reranked)}
    return {r.name: shades[r.depth] if r.depth else COLORS[r.first_stage] for r in results}


def plot_quality_vs_latency(report: EvalReport, path: Path) -> bool:
    """nDCG@10 and MRR@10 against median query latency per system (bars reach p95); False if none was timed.

    Systems reranking a given run are left out: their first stage was not timed here.
    """
    timed: list[tuple[SystemResult, float, float]] = []
    for r in (r for r in report.systems if r.first_stage != "run"):
        median, p95 = latency_ms(r.timings)
        if median is not None and median > 0:
            timed.append((r, median, median if p95 is None else p95))
    if not timed:
        return False
    plt = _pyplot()
    colors = _latency_colors([r for r, _, _ in timed])
    fig, axes = plt.subplots(1, len(PLOT_MEASURES), figsize=(12, 5.5))
    for ax, measure in zip(axes, PLOT_MEASURES):
        chain = [(median, r.metrics[measure]) for r, median, _ in timed if r.first_stage == "dense"]
        if len(chain) > 1:
            ax.plot(*zip(*chain), color="#bbbbbb", linewidth=1, linestyle=":", zorder=1)
        for result, median, p95 in timed:
            y = result.metrics[measure]
            ax.errorbar(
                [median],
                [y],
                xerr=[[0.0], [max(p95 - median, 0.0)]],
                fmt="o",
                markersize=8,
                capsize=3,
                color=colors[result.name],
                label=result.name,
                zorder=2,
            )
            text = f"@{result.depth}" if result.depth else result.name
            offset = (0, -14) if result.depth else (0, 8)
            ax.annotate(text, (median, y), textcoords="offset points", xytext=offset, ha="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("query latency, ms (log scale; dot = median, bar to p95)")
        ax.set_ylabel(measure)
        ax.set_title(measure)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.15, y=0.12)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    load = report.versions.get("load_average_1_5_15min", "?").split()[0]
    fig.suptitle(
        f"{report.dataset}: quality against query latency (one query at a time, "
        f"{report.versions.get('cpus', '?')} CPUs, load average {load})\n{_subtitle(report)}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
