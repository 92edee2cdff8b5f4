"""Evaluation datasets: queries, qrels, a streamed corpus and published runs, from a folder or the hub.

`load_dataset(name_or_path)` resolves its argument in this order:
1. an existing folder: its format is detected from the files present (`.gz` accepted for every file):
   - uniform: `queries.tsv` (qid<TAB>text), `qrels.txt` (TREC qrels), optional `corpus.jsonl`
     (`{"id", "text", "title"?}`) and `runs/*.trec`; `split` is ignored;
   - BEIR: `queries.jsonl`, `qrels/<split>.tsv` (header `query-id corpus-id score`), optional `corpus.jsonl`
     (`{"_id", "title", "text"}`); split "test" by default;
   - MS MARCO: `queries.<split>.tsv`, `qrels.<split>.tsv` (TREC qrels), optional `collection.tsv`
     (pid<TAB>text); split "dev" by default;
2. a name such as `msmarco-dl20` or `cacm`: the first folder of that name on the search path
   (`dataset_search_path`): the `data_dir` argument, then `$TWOSTAGE_DATA`, then `./data` (relative to the
   current working directory);
3. anything else: a BEIR-style Hugging Face hub dataset such as `BeIR/scifact` (see `eval.hub`).

Queries are kept only where they have judgments (as BEIR's loader does); a judged query without text is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twostage.eval.beir import read_beir_qrels, read_beir_queries
from twostage.eval.errors import DatasetError, EvalInputError
from twostage.eval.trec import Qrels, Queries, read_qrels, read_queries_tsv


@dataclass
class Dataset:
    """One evaluation set; the corpus is streamed on demand by `iter_corpus` (it may not fit in memory)."""

    name: str
    queries: Queries
    qrels: Qrels
    corpus_path: Path | None
    runs: dict[str, Path]
    source: str
    hub_corpus: Any = field(default=None, repr=False)  # rows of a hub corpus, when loaded from the hub

    def iter_corpus(self) -> Iterator[dict[str, str]]:
        """Yield every document as `{"id", "title", "text"}` (title "" where the source has none)."""
        if self.hub_corpus is not None:
            from twostage.eval.hub import iter_hub_corpus

            return iter_hub_corpus(self.hub_corpus)
        if self.corpus_path is None:
            raise DatasetError(f"dataset {self.name!r} ({self.source}) has no corpus")
        return _corpus_rows(self.corpus_path)


def _corpus_rows(path: Path) -> Iterator[dict[str, str]]:
    """The corpus file read by the one corpus reader (``indexes.readers``: JSONL with ``_id``/``id``, MS MARCO's
    ``pid<TAB>text``, gzipped or not) as ``{"id", "title", "text"}`` rows; a bad record is an EvalInputError naming
    the file, line and field."""
    from twostage.indexes.errors import CorpusError
    from twostage.indexes.readers import read_corpus

    try:
        for doc in read_corpus(path):
            yield {"id": doc.id, "title": doc.title or "", "text": doc.text}
    except CorpusError as err:
        reason = err.reason.replace("malformed JSON", "invalid JSON", 1)  # eval's word for it since its first reader
        raise EvalInputError(reason, path=err.path, line=err.line, field=err.field) from None


def dataset_search_path(data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched, in order, for a dataset given by name: `data_dir`, $TWOSTAGE_DATA, ./data."""
    paths = [] if data_dir is None else [Path(data_dir).expanduser()]
    if os.environ.get("TWOSTAGE_DATA"):
        paths.append(Path(os.environ["TWOSTAGE_DATA"]).expanduser())
    return paths + [Path.cwd() / "data"]


def _find(folder: Path, name: str) -> Path | None:
    """`folder/name`, or `folder/name.gz`, whichever exists first."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _require(folder: Path, name: str, layout: str) -> Path:
    found = _find(folder, name)
    if found is None:
        raise DatasetError(f"dataset folder {folder} is missing {name} (or {name}.gz), which the {layout} layout needs")
    return found


def detect_format(folder: Path) -> str:
    """Which layout a dataset folder uses, from the files present: "beir", "msmarco" or "uniform"."""
    if _find(folder, "queries.jsonl") or (folder / "qrels").is_dir():
        return "beir"
    if _find(folder, "collection.tsv") or any(folder.glob("queries.*.tsv*")) or any(folder.glob("qrels.*.tsv*")):
        return "msmarco"
    if _find(folder, "queries.tsv") or _find(folder, "qrels.txt") or _find(folder, "corpus.jsonl"):
        return "uniform"
    raise DatasetError(
        f"{folder} is not a dataset folder: expected queries.tsv + qrels.txt [+ corpus.jsonl] "
        "(uniform), queries.jsonl + qrels/<split>.tsv [+ corpus.jsonl] (BEIR), or "
        "queries.<split>.tsv + qrels.<split>.tsv [+ collection.tsv] (MS MARCO); .gz accepted"
    )


def _runs(folder: Path) -> dict[str, Path]:
    """Published runs in `folder/runs`, by name (file name without `.trec` / `.trec.gz`)."""
    runs_dir = folder / "runs"
    files = sorted(runs_dir.glob("*.trec")) + sorted(runs_dir.glob("*.trec.gz")) if runs_dir.is_dir() else []
    return {path.name.removesuffix(".gz").removesuffix(".trec"): path for path in files}


def _judged_queries(queries: Queries, qrels: Qrels, source: str | Path) -> Queries:
    """The queries that have judgments, in qrels order; every judged query must have text."""
    lacking = [qid for qid in qrels if qid not in queries]
    if lacking:
        raise DatasetError(f"{len(lacking)} judged queries have no text in {source}, e.g. {lacking[:5]}")
    return {qid: queries[qid] for qid in qrels}


def load_folder(folder: str | Path, *, split: str | None = None) -> Dataset:
    """Load a dataset folder in the uniform, BEIR or MS MARCO layout (detected from its files)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder; pass the folder holding the dataset files")
    layout = detect_format(folder)
    if layout == "uniform":
        queries_path = _require(folder, "queries.tsv", "uniform")
        qrels = read_qrels(_require(folder, "qrels.txt", "uniform"))
        queries = read_queries_tsv(queries_path)
        corpus = _find(folder, "corpus.jsonl")
        source = f"uniform folder {folder}"
    elif layout == "beir":
        split = split or "test"
        queries_path = _require(folder, "queries.jsonl", "BEIR")
        qrels_file = _find(folder / "qrels", f"{split}.tsv")
        if qrels_file is None:
            splits = sorted(p.name.split(".")[0] for p in (folder / "qrels").glob("*.tsv*"))
            raise DatasetError(
                f"dataset folder {folder} is missing qrels/{split}.tsv, which the BEIR layout "
                f"needs for split {split!r} (splits present: {', '.join(splits) or 'none'})"
            )
        qrels = read_beir_qrels(qrels_file)
        queries = read_beir_queries(queries_path)
        corpus = _find(folder, "corpus.jsonl")
        source = f"BEIR folder {folder}, split {split}"
    else:
        split = split or "dev"
        queries_path = _require(folder, f"queries.{split}.tsv", f"MS MARCO (split {split!r})")
        qrels = read_qrels(_require(folder, f"qrels.{split}.tsv", f"MS MARCO (split {split!r})"))
        queries = read_queries_tsv(queries_path)
        corpus = _find(folder, "collection.tsv")
        source = f"MS MARCO folder {folder}, split {split}"
    return Dataset(folder.name, _judged_queries(queries, qrels, queries_path), qrels, corpus, _runs(folder), source)


def load_dataset(name_or_path: str | Path, *, data_dir: str | Path | None = None, split: str | None = None) -> Dataset:
    """Load a dataset from a folder, a name on the search path, or the Hugging Face hub (module docstring)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return load_folder(path, split=split)
    searched = dataset_search_path(data_dir)
    for base in searched:
        if (base / str(name_or_path)).is_dir():
            return load_folder(base / str(name_or_path), split=split)
    from twostage.eval.hub import load_hub_beir

    name = str(name_or_path)
    try:
        queries, qrels, corpus = load_hub_beir(name, split=split or "test")
    except DatasetError as exc:
        where = ", ".join(str(p) for p in searched)
        raise DatasetError(f"dataset {name!r} is not a folder and not on the search path ({where}); {exc}") from None
    queries = _judged_queries(queries, qrels, f"the queries of {name}")
    return Dataset(
        name, queries, qrels, None, {}, f"Hugging Face hub {name}, split {split or 'test'}", hub_corpus=corpus
    )
