"""trec_eval's interface over `eval.metrics`: its measure names (families expand to its standard cutoffs) and
its output lines `measure<TAB>qid|all<TAB>value`, so `twostage eval --run --qrels` reads like trec_eval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from twostage.eval.metrics import DEFAULT_MEASURES, EvalResult, Measure, parse_measure

#: the cutoffs trec_eval reports for `-m ndcg_cut`, `-m P`, `-m recall` and `-m map_cut`
TREC_CUTOFFS = (5, 10, 15, 20, 30, 100, 200, 500, 1000)
_FAMILIES = {"ndcg_cut": "nDCG", "p": "P", "recall": "R", "map_cut": "MAP"}
_TREC_NAMES = {"nDCG": "ndcg_cut_{}", "P": "P_{}", "R": "recall_{}", "MAP": "map_cut_{}"}
_TREC_PLAIN = {"nDCG": "ndcg", "MRR": "recip_rank", "MAP": "map"}


@dataclass(frozen=True)
class NamedMeasure:
    """A measure and the name it is printed under (trec_eval's for trec_eval spellings, else canonical)."""

    measure: Measure
    label: str


def trec_name(measure: Measure) -> str | None:
    """trec_eval's name for `measure` (ndcg_cut_10, P_10, recall_100, map, recip_rank), None if it has none."""
    if measure.cutoff is None:
        return _TREC_PLAIN.get(measure.name)
    pattern = _TREC_NAMES.get(measure.name)
    return pattern.format(measure.cutoff) if pattern else None


def expand_measures(specs: Sequence[str] | None) -> list[NamedMeasure]:
    """`-m` values, each possibly comma-separated, as named measures; a family without a cutoff (ndcg_cut, P,
    recall, map_cut) expands to trec_eval's cutoffs. Nothing given: `eval.metrics.DEFAULT_MEASURES`."""
    tokens = [t.strip() for spec in (specs or []) for t in spec.split(",") if t.strip()]
    if specs and not tokens:
        raise ValueError(f"-m {', '.join(map(repr, specs))} names no measure")
    if not tokens:
        return [NamedMeasure(parse_measure(m), str(parse_measure(m))) for m in DEFAULT_MEASURES]
    out: list[NamedMeasure] = []
    for token in tokens:
        family = _FAMILIES.get(token.lower())
        if family is not None:
            out += [NamedMeasure(Measure(family, k), _TREC_NAMES[family].format(k)) for k in TREC_CUTOFFS]
            continue
        measure = parse_measure(token)
        label = str(measure) if "@" in token else (trec_name(measure) or str(measure))
        out.append(NamedMeasure(measure, label))
    return list({m.label: m for m in out}.values())


def format_trec_eval(
    result: EvalResult, measures: Sequence[NamedMeasure], *, run_tag: str | None, per_query: bool = False
) -> str:
    """trec_eval's text output: optional per-query lines, then `runid`, `num_q` and each measure over `all`."""
    lines = []
    if per_query:
        for qid, values in result.per_query.items():
            lines += [f"{m.label:<22}\t{qid}\t{values[str(m.measure)]:.4f}" for m in measures]
    lines.append(f"{'runid':<22}\tall\t{run_tag or '-'}")
    lines.append(f"{'num_q':<22}\tall\t{result.n_queries}")
    lines += [f"{m.label:<22}\tall\t{result.aggregate[str(m.measure)]:.4f}" for m in measures]
    return "\n".join(lines)


def result_to_json(result: EvalResult, measures: Sequence[NamedMeasure], *, per_query: bool) -> dict:
    """The same numbers at full precision, keyed by the printed names."""
    out: dict = {
        "n_queries": result.n_queries,
        "aggregate": {m.label: result.aggregate[str(m.measure)] for m in measures},
        "missing_queries": result.missing_queries,
        "extra_queries": result.extra_queries,
    }
    if per_query:
        out["per_query"] = {
            qid: {m.label: values[str(m.measure)] for m in measures} for qid, values in result.per_query.items()
        }
    return out
