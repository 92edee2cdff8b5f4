"""Long documents: cutting each at the bi-encoder's window (the old behaviour) against splitting it into passages,
ranking documents by their best passage and reranking that passage; and the upper bound of scoring the original
passages themselves and keeping each document's best.

The set (issue 26): a dataset's passage pool, shuffled with a fixed seed and joined 12 at a time into documents, so a
document is relevant only through the few passages inside it; its label is the highest of its passages'. Built from
``msmarco-dl20`` (graded, relevant at 2) and confirmed on ``cacm``, and on ``cranfield`` and ``cisi`` where
benchmarks/build_sets.py has built them (``--sets``). ``--fraction`` builds from a seeded share of the
pool (the same shuffle, cut short) where the full pool cannot be encoded in the time there is: every figure says it.

    python benchmarks/bench_documents.py                 # full pools; writes benchmarks/results/documents.json + .md
    python benchmarks/bench_documents.py --fraction 0.1  # a tenth of each pool
    python benchmarks/bench_documents.py --datasets msmarco-dl20,cacm,cranfield,cisi  # the built sets too

Systems (document-level nDCG@10 and MRR@10, trec_eval's definitions): dense and hybrid first stages with and without
the second stage (MaxSim with the engine's default levers, the reranker a collection without a cross-encoder gets);
each on the truncated documents, on passages (our splitter, best passage per document) and on the original passages
(the upper bound); and the other paragraph packing (``ingest.passages.PACKING``: fill half the window, or the fewest
paragraphs that make a passage). The splitter rows compare overlaps (0 and 32 tokens) and semantic-text-splitter (if
installed) on dense retrieval, with the seconds each spent splitting.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from common import DATA_ROOT, RESULTS, SETS_ROOT, THRESHOLDS, machine, minilm_path  # noqa: I001  (first: repo importable, hub off)

from twostage import grouping  # noqa: E402
from twostage.engine import Engine  # noqa: E402
from twostage.eval.datasets import load_folder  # noqa: E402
from twostage.eval.metrics import evaluate  # noqa: E402
from twostage.indexes.documents import Document, Passage  # noqa: E402
from twostage.ingest.passages import PACKING, PACKINGS, Splitter, splitter_for  # noqa: E402
from twostage.retriever.biencoder import BiEncoder  # noqa: E402

PER_DOCUMENT = 12
SEED = 0
K = 100
MEASURES = ("nDCG@10", "MRR@10")
SYSTEMS = {  # name -> search options
    "dense": {"rerank": False, "first_stage": "dense"},
    "hybrid": {"rerank": False, "first_stage": "hybrid"},
    "dense + maxsim": {"rerank": True, "first_stage": "dense"},
    "hybrid + maxsim": {"rerank": True, "first_stage": "hybrid"},
}
OVERLAPS = (0, 32)
#: the second stage's passages per document the default row uses (``twostage.grouping.RERANK_PASSAGES``)
DEFAULT_RERANK_PASSAGES = grouping.RERANK_PASSAGES
#: the paragraph packing the default does not use, measured beside it
OTHER_PACKING = next(packing for packing in PACKINGS if packing != PACKING)


def build(folder: Path, fraction: float) -> tuple[dict, dict, dict, dict]:
    """(passages pid -> Document, documents id -> Document, pid -> document id, document qrels) of one dataset."""
    data = load_folder(folder)
    passages = {r["id"]: Document(r["id"], r["text"], r.get("title") or None) for r in data.iter_corpus()}
    ids = sorted(passages)
    random.Random(SEED).shuffle(ids)
    ids = ids[: max(PER_DOCUMENT, int(len(ids) * fraction))]
    documents, owner = {}, {}
    for n in range(0, len(ids), PER_DOCUMENT):
        doc_id = f"D{n // PER_DOCUMENT:05d}"
        members = ids[n : n + PER_DOCUMENT]
        documents[doc_id] = Document(doc_id, "\n\n".join(passages[p].text_for_encoding() for p in members))
        owner.update({p: doc_id for p in members})
    qrels: dict[str, dict[str, int]] = {}
    for qid, labels in data.qrels.items():
        for pid, label in labels.items():
            if pid in owner:
                doc = qrels.setdefault(qid, {})
                doc[owner[pid]] = max(doc.get(owner[pid], 0), label)
    kept = {p: passages[p] for p in ids}
    return kept, documents, owner, {q: labels for q, labels in qrels.items() if any(v > 0 for v in labels.values())}


def collection(
    path: Path, encoder: BiEncoder, docs: list[Document], splitter: Splitter | None, tokens: bool, reuse: bool = False
) -> tuple[Engine, dict]:
    """A collection of ``docs`` (tokens stored for MaxSim when asked) and what indexing it cost; with ``reuse``, the
    one an earlier run left at ``path`` when it holds as many documents and passages (no seconds then)."""
    if reuse and (path / "manifest.json").is_file():
        engine = Engine.open(path, reranker="maxsim", encoder=encoder)
        split = splitter or engine.splitter or splitter_for(encoder)
        passages = sum(
            len(p) for start in range(0, len(docs), 256) for p in split.split_many(docs[start : start + 256])
        )
        if (len(engine.collection), engine.collection.passage_count()) == (len(docs), passages):
            return engine, {
                "documents": len(engine.collection),
                "passages": engine.collection.passage_count(),
                "reused": True,
            }
        engine.close()
        shutil.rmtree(path)
    engine = Engine.create(path, reranker="maxsim", encoder=encoder, store_tokens="float16" if tokens else False)
    if splitter is not None:
        engine.splitter = splitter
    split_s = _split_seconds(engine.splitter or splitter_for(encoder), docs)
    report = engine.add(docs)
    return engine, {
        "documents": len(engine.collection),
        "passages": engine.collection.passage_count(),
        "split_documents": report.split,
        "truncated": report.truncated,
        "index_s": round(report.seconds, 1),
        "split_s": round(split_s, 2),
    }


def _split_seconds(splitter: Splitter, docs: list[Document]) -> float:
    started = time.perf_counter()
    for start in range(0, len(docs), 256):
        splitter.split_many(docs[start : start + 256])
    return time.perf_counter() - started


def run_of(engine: Engine, queries: dict[str, str], options: dict, owner: dict | None = None) -> dict:
    """Each query's document run; with ``owner`` (pid -> document) a passage run scored by best passage per document."""
    k = K * PER_DOCUMENT // 4 if owner else K
    results = engine.search_queries(queries, candidate_depth=k, top_k=k, **options)
    run = {}
    for qid, result in results.items():
        scores: dict[str, float] = {}
        for doc_id, score in result.run().items():
            doc = owner[doc_id] if owner else doc_id
            scores[doc] = max(scores.get(doc, float("-inf")), score)
        run[qid] = scores
    return run


def measure(run: dict, qrels: dict, threshold: int) -> dict:
    result = evaluate(run, qrels, MEASURES, rel_threshold=threshold, complete=True)
    return {m: round(result.aggregate[m], 4) for m in MEASURES}


def semantic_text_splitter(encoder: BiEncoder) -> Splitter | None:
    """semantic-text-splitter's TextSplitter over the same tokenizer and window, wrapped as a Splitter, if installed."""
    try:
        from semantic_text_splitter import TextSplitter
    except ImportError:
        return None
    ours = splitter_for(encoder, overlap=32)
    library = TextSplitter.from_huggingface_tokenizer(ours.tokenizer, capacity=ours.window - 2, overlap=32)

    class Library(Splitter):
        def split_many(self, docs):  # type: ignore[override]
            return [
                [Passage(start, start + len(chunk), chunk) for start, chunk in library.chunk_indices(doc.text)]
                for doc in docs
            ]

    wrapped = Library.__new__(Library)
    wrapped.__dict__.update(ours.__dict__)
    return wrapped


def bench_dataset(
    name: str,
    folder: Path,
    work: Path,
    encoder: BiEncoder,
    fraction: float,
    sizes: list[int],
    splitters: bool,
    rerank_passages: list[int],
    reuse: bool,
) -> dict:
    passages, documents, owner, qrels = build(folder, fraction)
    data = load_folder(folder)
    queries = {q: t for q, t in data.queries.items() if q in qrels}
    threshold = THRESHOLDS.get(name, 1)
    docs = list(documents.values())
    out: dict = {
        "pool_passages": len(passages),
        "documents": len(docs),
        "queries": len(queries),
        "fraction": fraction,
        "collections": {},
        "systems": {},
        "splitters": {},
    }
    builds = {
        "truncated": (docs, Splitter(encoder_tokenizer(encoder), 10**9), True),  # one passage each: the model cuts
        "passages": (docs, splitter_for(encoder), True),
        f"passages, packing {OTHER_PACKING}": (docs, splitter_for(encoder, packing=OTHER_PACKING), True),
        "passages filling the window": (docs, splitter_for(encoder, paragraph_share=None), True),
        **{
            f"passages, {w} tokens": (docs, splitter_for(encoder, passage_tokens=w, paragraph_share=None), True)
            for w in sizes
        },
        "original passages": (list(passages.values()), None, True),
    }
    for label, (items, splitter, tokens) in builds.items():
        engine, stats = collection(work / name / label.replace(" ", "-"), encoder, items, splitter, tokens, reuse)
        out["collections"][label] = stats
        print(f"{name} {label}: {stats}", flush=True)
        split = label not in ("truncated", "original passages")
        for system, options in SYSTEMS.items():
            counts = rerank_passages if split and options["rerank"] else [DEFAULT_RERANK_PASSAGES]
            for count in counts:
                grouping.RERANK_PASSAGES = count
                row = system if count == DEFAULT_RERANK_PASSAGES else f"{system}, {count} per document"
                run = run_of(engine, queries, options, owner if label == "original passages" else None)
                out["systems"].setdefault(row, {})[label] = measure(run, qrels, threshold)
                print(f"  {row}: {out['systems'][row][label]}", flush=True)
        grouping.RERANK_PASSAGES = DEFAULT_RERANK_PASSAGES
        engine.close()
    if not splitters:
        return out
    variants = {f"ours, overlap {o}": splitter_for(encoder, overlap=o) for o in OVERLAPS if o != 32}
    library = semantic_text_splitter(encoder)
    if library is not None:
        variants["semantic-text-splitter, overlap 32"] = library
    out["splitters"]["ours, overlap 32"] = {
        **out["systems"]["dense"]["passages"],
        "split_s": out["collections"]["passages"]["split_s"],
        "passages": out["collections"]["passages"]["passages"],
    }
    for label, splitter in variants.items():
        engine, stats = collection(work / name / f"split-{len(out['splitters'])}", encoder, docs, splitter, False)
        run = run_of(engine, queries, SYSTEMS["dense"])
        out["splitters"][label] = {
            **measure(run, qrels, threshold),
            "split_s": stats["split_s"],
            "passages": stats["passages"],
        }
        print(f"  splitter {label}: {out['splitters'][label]}", flush=True)
        engine.close()
    return out


def encoder_tokenizer(encoder: BiEncoder):
    return splitter_for(encoder).tokenizer


def markdown(results: dict) -> str:
    lines = [
        "# Long documents: truncation, passages with best-passage grouping, and the upper bound",
        "",
        f"Machine of the latest run: {results['machine']}; load average {results['load_average']} (timings are noisy; "
        "quality figures are not). Each dataset names the machine that measured it.",
        "",
    ]
    if results.get("note"):
        lines += [results["note"], ""]
    for name, data in results["datasets"].items():
        lines += [
            f"## {name}",
            "",
            f"Command: `{data.get('command') or 'python benchmarks/bench_documents.py ' + ' '.join(results['arguments'])}`"
            f"; machine: {data.get('machine') or results['machine']}.",
            "",
            f"{data['documents']} documents of {PER_DOCUMENT} passages from {data['pool_passages']} pool passages "
            f"(fraction {data['fraction']:g} of the pool, seed {SEED}); {data['queries']} queries with a relevant "
            f"document.",
            "",
        ]
        windows = [c for c in data["collections"] if c not in ("truncated", "passages", "original passages")]
        columns = ["truncated", "passages", *windows, "original passages"]
        heads = ["truncated", "passages (default, best passage)", *windows, "upper bound (original passages)"]
        lines += ["| system | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for system, cells in data["systems"].items():
            row = [
                f"{cells[c]['nDCG@10']:.3f} / {cells[c]['MRR@10']:.3f}" if c in cells else "not reached"
                for c in columns
            ]
            lines.append(f"| {system} | " + " | ".join(row) + " |")
        lines += [
            "",
            "nDCG@10 / MRR@10. Collections:",
            "",
            "| collection | documents | passages | split | seconds splitting | seconds indexing |",
            "|---|---|---|---|---|---|",
        ]
        for label, c in data["collections"].items():
            lines.append(
                f"| {label} | {c['documents']} | {c['passages']} | {c.get('split_documents', '')} | "
                f"{c.get('split_s', '')} | {c.get('index_s', 'reused')} |"
            )
        splitters, earlier = data["splitters"], data.get("earlier_splitters")
        if not splitters and not earlier:
            lines.append("")
            continue
        if not splitters:
            splitters = earlier["rows"]
            lines += [
                "",
                f"Splitters: from an earlier run on {earlier['fraction']:g} of the pool (load average "
                f"{earlier['load_average']}), not rerun here.",
            ]
        lines += [
            "",
            "Splitters (dense, nDCG@10 / MRR@10):",
            "",
            "| splitter | nDCG@10 | MRR@10 | passages | seconds splitting |",
            "|---|---|---|---|---|",
        ]
        for label, s in splitters.items():
            lines.append(f"| {label} | {s['nDCG@10']:.3f} | {s['MRR@10']:.3f} | {s['passages']} | {s['split_s']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TWOSTAGE_DATA", DATA_ROOT)))
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parents[1] / "runs" / "bench-documents")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--fraction", type=float, default=1.0, help="share of each pool to build documents from")
    parser.add_argument("--sets", type=Path, default=SETS_ROOT, help="where build_sets.py wrote cranfield and cisi")
    parser.add_argument("--datasets", default="msmarco-dl20,cacm")
    parser.add_argument(
        "--sizes", default="", help="also passages of at most these many tokens, comma-separated (e.g. 256)"
    )
    parser.add_argument(
        "--no-splitters", action="store_true", help="skip the splitter comparison (dense, overlap and library)"
    )
    parser.add_argument(
        "--rerank-passages",
        default="1",
        help="also rows whose second stage scores this many passages per document, comma-separated (e.g. 1,8)",
    )
    parser.add_argument("--reuse", action="store_true", help="open the collections an earlier run left in --work")
    args = parser.parse_args()
    sizes = [int(w) for w in args.sizes.split(",") if w.strip()]
    rerank_passages = sorted({DEFAULT_RERANK_PASSAGES, *(int(n) for n in args.rerank_passages.split(",") if n.strip())})

    folders = {n: root / n for n in args.datasets.split(",") for root in (args.sets, args.data) if (root / n).is_dir()}
    names = list(folders)
    if not names:
        print(f"none of {args.datasets} under {args.data} or {args.sets}; nothing measured")
        return 0
    for name in names if not args.reuse else []:
        shutil.rmtree(args.work / name, ignore_errors=True)
    encoder = BiEncoder(minilm_path())
    results = {
        "machine": machine(),
        "load_average": round(os.getloadavg()[0], 1),
        "arguments": sys.argv[1:],
        "model": "sentence-transformers/all-MiniLM-L6-v2 (window 256 tokens)",
        "datasets": {},
    }
    for name in names:
        results["datasets"][name] = {
            "command": " ".join(["python benchmarks/bench_documents.py", *sys.argv[1:]]),
            "machine": results["machine"],
        }
        results["datasets"][name] |= bench_dataset(
            name,
            folders[name],
            args.work,
            encoder,
            args.fraction,
            sizes,
            not args.no_splitters,
            rerank_passages,
            args.reuse,
        )
    results["load_average_end"] = round(os.getloadavg()[0], 1)
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = args.out / "documents.json"
    if earlier.is_file():  # datasets measured by an earlier run (another --datasets) are kept beside this run's
        previous = json.loads(earlier.read_text())
        kept = previous.get("datasets", {})
        for data in kept.values():  # each dataset names the machine that measured it
            data.setdefault("machine", previous.get("machine"))
        for name, data in results["datasets"].items():  # a reused collection keeps the figures of the run that built it
            before = kept.get(name, {})
            if not data["splitters"] and (before.get("splitters") or before.get("earlier_splitters")):
                data["earlier_splitters"] = before.get("earlier_splitters") or {
                    "fraction": before["fraction"],
                    "rows": before["splitters"],
                    "load_average": "not recorded",
                }
            for label, stats in data["collections"].items():
                if stats.get("reused"):
                    stats.update({**kept.get(name, {}).get("collections", {}).get(label, {}), **stats})
        results["datasets"] = {**{k: v for k, v in kept.items() if k not in results["datasets"]}, **results["datasets"]}
    (args.out / "documents.json").write_text(json.dumps(results, indent=1))
    (args.out / "documents.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
