"""``twostage train``: a handful of steps with tiny models on a tiny synthetic collection — loss falls, the best
checkpoint reloads (``CrossEncoder(DIR)``, ``--reranker DIR``), resume continues, ``--max-steps`` and the time
budget are honoured, the split is by query, and the teacher's MaxSim scores equal a direct computation."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from twostage.training import data as train_data
from twostage.training.common import ScoredList, TrainSettings
from twostage.training.run import TrainOptions, parse_duration, train

TOPICS = [
    "berlin",
    "paris",
    "london",
    "rome",
    "madrid",
    "vienna",
    "tokyo",
    "amsterdam",
    "munich",
    "hamburg",
    "thames",
    "seine",
    "danube",
    "rhine",
    "spree",
    "museum",
    "opera",
    "cathedral",
    "castle",
    "bridge",
]
FACETS = ["population", "history", "weather", "river", "university", "music"]
FILLER = "the a of in and is known for its many old new large small famous".split()


@pytest.fixture(scope="module")
def corpus_and_queries(tmp_path_factory):
    """120 passages (topic x facet, with filler) and 40 queries with judgments, written as files."""
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("train-data")
    docs, queries, qrels = [], {}, []
    for t, topic in enumerate(TOPICS):
        for f, facet in enumerate(FACETS):
            words = [topic, facet] + rng.sample(FILLER, 6) + [rng.choice(TOPICS)]
            rng.shuffle(words)
            docs.append({"id": f"d{t}-{f}", "text": " ".join(words)})
        for f in (0, 1):
            qid = f"q{t}-{f}"
            queries[qid] = f"{FACETS[f]} of {topic}"
            qrels.append(f"{qid} 0 d{t}-{f} 2")
            qrels.append(f"{qid} 0 d{t}-{(f + 2) % 6} 0")
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    (folder / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
    (folder / "qrels.txt").write_text("\n".join(qrels) + "\n")
    (folder / "test.tsv").write_text(f"t1\t{queries['q0-0']}\n")  # a "held-out test query" equal to a training one
    return folder, docs


@pytest.fixture(scope="module")
def collection(corpus_and_queries, tiny_bi_encoder_dir, tmp_path_factory):
    from twostage.engine import Engine

    _, docs = corpus_and_queries
    path = tmp_path_factory.mktemp("train-coll") / "coll"
    with Engine.create(path, model=str(tiny_bi_encoder_dir), reranker=None) as engine:
        engine.add(docs)
    return path


def options(tmp_path, folder, collection, base, **overrides) -> TrainOptions:
    settings = TrainSettings(
        learning_rate=5e-4,
        head_learning_rate=5e-3,
        warmup_ratio=0.0,
        batch_size=8,
        max_steps=overrides.pop("max_steps", 8),
        eval_steps=overrides.pop("eval_steps", 4),
        logging_steps=1,
        time_budget_s=overrides.pop("time_budget_s", None),
        progress=False,
        epochs=overrides.pop("epochs", 3.0),
    )
    values = dict(
        kind="reranker",
        out=tmp_path / "model",
        collection=collection,
        queries=str(folder / "queries.tsv"),
        base=str(base),
        max_queries=None,
        val_queries=6,
        depth=12,
        val_depth=10,
        max_length=64,
        settings=settings,
        exclude=[str(folder / "test.tsv")],
    )
    values.update(overrides)
    return TrainOptions(**values)


def quiet(message: str) -> None:
    pass


def test_split_is_by_query_and_deterministic():
    qids = [f"q{i}" for i in range(50)] + ["q3", "q7"]  # duplicates (several pairs of one query) stay together
    train_ids, val_ids = train_data.split_by_query(qids, 10, seed=1)
    assert len(val_ids) == 10 and len(train_ids) == 40
    assert not set(train_ids) & set(val_ids)
    assert (train_ids, val_ids) == train_data.split_by_query(qids, 10, seed=1)


def test_overlapping_test_queries_are_excluded_by_id_and_text():
    kept, dropped = train_data.exclude_overlap(
        {"1": "What is RNA?", "2": "rna what is", "3": "dna"}, {"1": "x", "9": "what is  rna"}
    )
    assert dropped == ["1"] and set(kept) == {"2", "3"}


def test_row_layouts_follow_the_teacher():
    item = ScoredList(
        "q", "query", [f"d{i}" for i in range(6)], [f"t{i}" for i in range(6)], [0.1, 0.9, 0.5, 0.3, 0.2, 0.0]
    )
    rows = train_data.margin_rows([item], negatives=2, seed=0, positive_from=1)
    assert rows["positive"] == ["t1"]  # the teacher's best
    assert rows["label"][0][0] == 0.9 and all(v < 0.9 for v in rows["label"][0][1:])
    lists = train_data.listwise_rows([item], size=4, temperature=0.5, seed=0)
    assert len(lists["docs"][0]) == 4 and {"t1", "t2"} <= set(lists["docs"][0])
    assert max(lists["labels"][0]) == pytest.approx(1.8)
    triples = train_data.contrastive_rows([item], seed=0, skip_top=3)
    assert triples["positive"] == ["t1"] and triples["negative"][0] in {"t4", "t0", "t5"}
    judged = train_data.judged_lists([item], {"q": {"d1": 2, "d4": 0}}, "skip")
    assert judged[0].doc_ids == ["d1", "d4"] and judged[0].scores == [2.0, 0.0]
    assert len(train_data.judged_lists([item], {"q": {"d1": 2}}, "negative")[0].doc_ids) == 6


def test_teacher_scores_equal_a_direct_maxsim(collection, tiny_bi_encoder_dir):
    from sentence_transformers import SentenceTransformer

    from twostage.engine import Engine
    from twostage.training.run import load_teacher, mine, teacher_scores

    with Engine.open(collection, reranker=None) as engine:
        lists = mine(engine, {"q": "population of berlin"}, 5, quiet, False)
        teacher = load_teacher("maxsim", engine, lists, quiet, False)
        got = teacher_scores(teacher, lists, False)[0]
    model = SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu")

    def vectors(text: str, half: bool) -> np.ndarray:
        out = model.encode([text], output_value=None, show_progress_bar=False)[0]
        keep = out["attention_mask"].numpy().astype(bool) & ~np.isin(
            out["input_ids"].numpy(), model.tokenizer.all_special_ids
        )
        v = out["token_embeddings"].numpy()[keep].astype(np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        if half:
            v = v.astype(np.float16).astype(np.float64)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    q = vectors("population of berlin", False)
    expected = [(q @ vectors(text, True).T).max(axis=1).sum() for text in lists[0].texts]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_reranker_distillation_trains_reloads_and_resumes(
    tmp_path, corpus_and_queries, collection, tiny_cross_encoder_dir
):
    from sentence_transformers import CrossEncoder

    from twostage.reranker import CrossEncoderReranker, load_reranker

    folder, _ = corpus_and_queries
    opts = options(tmp_path, folder, collection, tiny_cross_encoder_dir, max_steps=8, eval_steps=4)
    report = train(opts, log=quiet)
    out = opts.out
    assert report["training"]["steps"] == 8 and report["training"]["stopped_by"] == "max_steps"
    assert report["data"]["excluded_overlap"] == 1  # q0-0 equals the held-out test query's text
    assert report["data"]["train_queries"] + report["data"]["val_queries"] == 39
    losses = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    curve = [r["loss"] for r in losses if "loss" in r]
    assert len(curve) == 8 and np.mean(curve[-3:]) < np.mean(curve[:3])  # the loss falls
    assert (out / "report.json").is_file() and "Validation" in (out / "report.md").read_text()
    assert report["training"]["best_step"] in (4, 8)

    model = CrossEncoder(str(out))
    assert model.num_labels == 1
    reranker, notice = load_reranker(str(out), explicit=True)
    assert isinstance(reranker, CrossEncoderReranker) and notice is None
    scores = reranker.score("population of berlin", ["berlin population", "opera music"])
    raw = model.predict(
        [("population of berlin", "berlin population"), ("population of berlin", "opera music")],
        activation_fn=__import__("torch").nn.Identity(),
    )
    np.testing.assert_allclose(scores, raw, rtol=1e-4, atol=1e-4)

    # Resume: a longer --max-steps continues from the newest checkpoint instead of starting over.
    opts.settings.max_steps = 12
    resumed = train(opts, log=quiet)
    assert resumed["training"]["resumed_from"].endswith("checkpoint-8")
    assert resumed["training"]["steps"] == 12


def test_time_budget_and_judged_training(tmp_path, corpus_and_queries, collection, tiny_cross_encoder_dir):
    folder, _ = corpus_and_queries
    opts = options(
        tmp_path,
        folder,
        collection,
        tiny_cross_encoder_dir,
        max_steps=50,
        time_budget_s=0.0,
        teacher=None,
        qrels=str(folder / "qrels.txt"),
        loss="bce",
    )
    report = train(opts, log=quiet)
    assert report["training"]["stopped_by"] == "time_budget" and report["training"]["steps"] == 1
    assert report["data"]["labels"].startswith("judgments")
    assert report["validation"]["after"] is not None  # the stopping step was validated and kept


def test_retriever_training_and_reindex(tmp_path, corpus_and_queries, collection, tiny_bi_encoder_dir):
    from sentence_transformers import SentenceTransformer

    from twostage.engine import Engine

    folder, docs = corpus_and_queries
    opts = options(
        tmp_path,
        folder,
        collection,
        tiny_bi_encoder_dir,
        kind="retriever",
        max_steps=4,
        eval_steps=2,
        loss="mnrl",
        depth=12,
    )
    report = train(opts, log=quiet)
    assert report["training"]["steps"] == 4
    assert SentenceTransformer(str(opts.out), device="cpu").get_embedding_dimension() == 32
    with Engine.create(tmp_path / "reindexed", model=str(opts.out), reranker=None) as engine:
        engine.add(docs[:10])
        assert engine.search("population of berlin", k=3, rerank=False).hits


def test_cli_train_reranker_honours_max_steps(tmp_path, corpus_and_queries, collection, tiny_cross_encoder_dir, capsys):
    from twostage.cli import main

    folder, _ = corpus_and_queries
    out = tmp_path / "cli-model"
    rc = main(
        [
            "train",
            "reranker",
            "--collection",
            str(collection),
            "--queries",
            str(folder / "queries.tsv"),
            "--base",
            str(tiny_cross_encoder_dir),
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--eval-steps",
            "3",
            "--val-queries",
            "5",
            "--depth",
            "10",
            "--batch-size",
            "4",
            "--max-length",
            "64",
            "--quiet",
            "--loss",
            "listwise-kl",
            "--temperature",
            "2",
        ]
    )
    assert rc == 0
    assert json.loads((out / "report.json").read_text())["training"]["steps"] == 3
    assert "3 steps" in capsys.readouterr().out


def test_cli_rejects_bad_budget_and_missing_collection(tmp_path, capsys):
    from twostage.cli import main

    assert parse_duration("45m") == 2700 and parse_duration("1.5h") == 5400 and parse_duration("90") == 90
    rc = main(
        [
            "train",
            "reranker",
            "--collection",
            str(tmp_path / "nope"),
            "--queries",
            "x.tsv",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "no such collection" in capsys.readouterr().err
    rc = main(
        [
            "train",
            "reranker",
            "--collection",
            str(tmp_path),
            "--queries",
            "x.tsv",
            "--out",
            str(tmp_path / "o"),
            "--time-budget",
            "soon",
        ]
    )
    assert rc == 2


@pytest.mark.parametrize(
    "option, expected",
    [
        (["--lr=-1"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be"),
        (["--warmup", "2"], "--warmup is a fraction"),
        (["--negatives", "0"], "--negatives must be"),
        (["--temperature", "0"], "--temperature must be"),
        (["--max-steps", "0"], "--max-steps must be"),
        (["--epochs", "0"], "--epochs must be"),
        (["--max-length", "0"], "--max-length must be"),
        (["--time-budget", "-5"], "--time-budget must be positive"),
        (["--list-size", "1"], "--list-size must be"),
    ],
)
def test_cli_rejects_a_bad_recipe_before_any_model_loads(tmp_path, capsys, option, expected):
    from twostage.cli import main

    rc = main(
        [
            "train",
            "reranker",
            "--collection",
            str(tmp_path),
            "--queries",
            "x.tsv",
            "--out",
            str(tmp_path / "o"),
            *option,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_long_documents_candidate_is_the_passage_that_matched(tmp_path, tiny_bi_encoder_dir):
    """Mining keeps each candidate's stored passage key; the teacher scores a long document's candidate from that
    passage's stored tokens (as MaxSim computes them from its text, not the first passage's), and cached lists read
    the same passage texts back by key."""
    from twostage.engine import Engine
    from twostage.indexes.documents import document_of
    from twostage.stages import maxsim
    from twostage.training.run import _load_lists, _save_lists, load_teacher, mine, teacher_scores

    rng = random.Random(1)
    paragraphs = [" ".join([topic, *rng.sample(FILLER, 10), facet]) for topic in TOPICS[:6] for facet in FACETS]
    docs = [{"id": "guide", "text": "\n\n".join(paragraphs)}]
    docs += [{"id": f"s{i}", "text": f"{topic} {FACETS[i % 6]} of the city"} for i, topic in enumerate(TOPICS[6:])]
    with Engine.create(tmp_path / "c", model=str(tiny_bi_encoder_dir), reranker=None, store_tokens="float16") as engine:
        engine.add(docs)
        assert engine.collection.passage_count() > len(engine.collection) + 2
        queries = {f"q{i}": f"{FACETS[i % 6]} of {topic}" for i, topic in enumerate(TOPICS[:6])}
        lists = mine(engine, queries, len(docs), quiet, False)  # every document: the guide among them
        found = [(item, i) for item in lists for i, d in enumerate(item.doc_ids) if d == "guide"]
        assert found and all(document_of(item.passage_keys[i]) == "guide" for item, i in found)
        assert any(item.passage_keys[i] != "guide" for item, i in found)  # some match beyond the first passage
        got = teacher_scores(load_teacher("maxsim", engine, lists, quiet, False), lists, False)
        fresh = maxsim(engine.encoder)
        for item, scores in zip(lists, got):
            np.testing.assert_allclose(scores, fresh.score(item.query, item.texts), rtol=2e-3, atol=2e-3)
        cache = tmp_path / "lists.jsonl"
        _save_lists(cache, {"k": 1}, lists, got)
        loaded, teacher = _load_lists(cache, {"k": 1}, engine)
    assert [x.texts for x in loaded] == [x.texts for x in lists] and teacher == got
    assert [x.passage_keys for x in loaded] == [x.passage_keys for x in lists]
