"""Evaluation that stands alone from the engine: datasets, TREC file I/O, trec_eval-exact metrics, significance.

Modules: `eval.datasets` (load_dataset, Dataset), `eval.trec` (qrels/run/queries files), `eval.metrics`
(evaluate, parse_measure, format_table), `eval.significance` (paired tests), `eval.errors` (EvalInputError).
"""
