"""Evaluation: datasets, TREC file I/O, trec_eval-exact metrics, significance, and the harness behind `twostage eval`.

Standalone (no engine, no torch): `eval.datasets` (load_dataset, Dataset), `eval.trec` (qrels/run/queries files),
`eval.metrics` (evaluate, parse_measure, format_table), `eval.significance` (paired tests), `eval.treceval`
(trec_eval names and output), `eval.errors` (EvalInputError).
Harness (drives `twostage.Engine`): `eval.harness` (EvalConfig, run_evaluation), `eval.systems` (how each system
runs and is timed), `eval.timing`, `eval.report` (table, JSON, runs, CSV), `eval.plots`, `eval.cli` (`twostage eval`).
"""
