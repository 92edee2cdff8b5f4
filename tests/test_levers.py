"""Second-stage levers (issue 14): score fusion, Rocchio feedback, MaxSim query-token weighting and the token
document-frequency table kept in step with add / replace / delete; all on tiny models."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from twostage.engine import MAXSIM_DEFAULTS, Engine
from twostage.errors import UsageError
from twostage.indexes.collection import Collection
from twostage.indexes.document_store import DocumentStore
from twostage.indexes.documents import Document
from twostage.indexes.token_df import TokenDF
from twostage.reranker.base import Candidate, Reranker
from twostage.reranker.maxsim import MaxSimReranker, QueryTokens, content_token_ids
from twostage.reranker.score_fusion import FusedReranker, Fusion, fuse_scores
from twostage.retriever.biencoder import BiEncoder
from twostage.retriever.prf import PRF, rocchio

DOCS = [
    {"id": "a", "text": "berlin has a population of about 3 million people"},
    {"id": "b", "text": "the museum island in berlin is famous for its art"},
    {"id": "c", "text": "paris is the capital of france"},
    {"id": "d", "text": "the people of paris like the museum"},
]


# ------------------------------------------------------------------ fusion
def test_fuse_scores_zscore_minmax_and_rrf():
    first, second = [0.9, 0.5, 0.1], [1.0, 3.0, 2.0]
    z = lambda x: (np.array(x) - np.mean(x)) / np.std(x)  # noqa: E731
    np.testing.assert_allclose(fuse_scores(first, second, Fusion("zscore", 0.3)), 0.3 * z(second) + 0.7 * z(first))
    np.testing.assert_allclose(fuse_scores(first, second, Fusion("minmax", 0.5)), [0.5, 0.75, 0.25])
    np.testing.assert_allclose(
        fuse_scores(first, second, Fusion.parse("rrf")), [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62]
    )
    # weight 1 keeps the second stage's order, weight 0 the first's; constant scores contribute nothing
    assert np.argsort(-fuse_scores(first, second, Fusion("zscore", 1.0))).tolist() == [1, 2, 0]
    assert np.argsort(-fuse_scores(first, second, Fusion("minmax", 0.0))).tolist() == [0, 1, 2]
    np.testing.assert_allclose(fuse_scores([1, 1], [2, 2], Fusion()), [0, 0])


@pytest.mark.parametrize("spec", ["mean", "zscore:1.5", "zscore:x", "rrf:-1"])
def test_fusion_specs_are_checked(spec):
    with pytest.raises(ValueError, match="fusion"):
        Fusion.parse(spec)


def test_fused_reranker_uses_the_candidates_first_stage_scores():
    class Fixed(Reranker):
        name = "fixed"

        def score(self, query, texts):
            return np.array([1.0, 3.0, 2.0][: len(texts)], dtype=np.float32)

    candidates = [Candidate("x", "t", 0.9), Candidate("y", "t", 0.5), Candidate("z", "t", 0.1)]
    fused = FusedReranker(Fixed(), "minmax:0.5")
    assert fused.name == "fixed+minmax:0.5"
    np.testing.assert_allclose(fused.score_candidates(["q"], [candidates])[0], [0.5, 0.75, 0.25])
    assert [r.doc_id for r in fused.rerank("q", candidates)] == ["y", "x", "z"]


# ------------------------------------------------------------------ feedback
def test_rocchio_moves_the_query_towards_the_feedback_centroid():
    q = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    docs = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    moved = rocchio(q, docs, PRF(k=2, beta=1.0))
    expected = np.array([1.0, 0.5, 0.5]) / np.linalg.norm([1.0, 0.5, 0.5])
    np.testing.assert_allclose(moved, expected, rtol=1e-6)
    assert moved.dtype == np.float32
    np.testing.assert_array_equal(rocchio(q, np.empty((0, 3)), PRF()), q)
    assert PRF.parse("5:0.25") == PRF(5, 0.25) and PRF.parse("2") == PRF(2)
    for bad in ("0", "x", "3:y", "3:-1"):
        with pytest.raises(ValueError, match="prf"):
            PRF.parse(bad)


# ------------------------------------------------------------------ token document frequencies
def test_token_df_counts_replaces_deletes_and_rebuilds(tmp_path):
    store = DocumentStore(tmp_path / "d.sqlite")
    table = TokenDF(store)
    table.put_many(["a", "b"], [[1, 2, 2, 3], [2, 5]])
    assert len(table) == 2 and table.df([1, 2, 3, 5, 9]).tolist() == [1, 2, 1, 1, 0]
    table.put_many(["a"], [[5]])  # a replaced document's old tokens are taken back
    assert table.df([1, 2, 3, 5]).tolist() == [0, 1, 0, 2]
    table.delete(["b", "missing"])
    assert len(table) == 1 and table.df([2, 5]).tolist() == [0, 1]
    np.testing.assert_allclose(table.idf([5, 7]), np.log1p([(1 - 1 + 0.5) / 1.5, (1 + 0.5) / 0.5]))
    table.rebuild([("x", "1 2"), ("y", "2")], lambda texts: [np.array(t.split(), dtype=np.int64) for t in texts])
    assert len(table) == 2 and table.df([1, 2, 5]).tolist() == [1, 2, 0]
    store.close()


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bi_encoder_dir):
    return BiEncoder(str(tiny_bi_encoder_dir))


def recount(engine: Engine) -> Counter:
    """Document frequencies counted from scratch over the collection's texts."""
    docs = list(engine.collection.iter_documents())
    ids = content_token_ids(engine.encoder, [d.text_for_encoding() for d in docs])
    return Counter(int(t) for row in ids for t in set(row.tolist()))


def df_table(engine: Engine) -> Counter:
    with engine.collection.store.reading() as con:
        return Counter(dict(con.execute("SELECT token_id, df FROM token_df")))


def test_engine_keeps_token_df_in_step_with_add_replace_delete(tmp_path, tiny_encoder):
    with Engine.create(tmp_path / "c", encoder=tiny_encoder, reranker="maxsim", store_tokens=True) as engine:
        engine.add(DOCS)
        assert df_table(engine) == recount(engine) and len(engine.collection.token_df) == 4
        engine.add([{"id": "a", "text": "france and paris"}])  # replace
        assert df_table(engine) == recount(engine)
        engine.delete(["b", "zzz"])
        assert df_table(engine) == recount(engine) and len(engine.collection.token_df) == 3
    # a document written without its token ids is recounted when IDF is next needed
    collection = Collection.open(tmp_path / "c")
    collection.upsert([Document("e", "berlin art")], np.ones((1, collection.manifest.dimension), np.float32))
    assert len(collection.token_df) == 3
    with Engine(collection, tiny_encoder, "maxsim") as engine:
        engine.search("berlin", k=4, query_tokens="idf")
        assert len(engine.collection.token_df) == 4 and df_table(engine) == recount(engine)


# ------------------------------------------------------------------ query-token weighting
def reference_maxsim(model: SentenceTransformer, query: str, passage: str, weights=None, special=False) -> float:
    """numpy MaxSim: weighted query tokens (specials optional, weight 1) against the passage's content tokens."""

    def tokens(text, keep_special):
        out = model.encode([text], output_value=None, show_progress_bar=False)[0]
        ids = out["input_ids"].numpy()
        is_special = np.isin(ids, model.tokenizer.all_special_ids)
        keep = out["attention_mask"].numpy().astype(bool) & (keep_special | ~is_special)
        v = out["token_embeddings"].numpy()[keep].astype(np.float64)
        return ids[keep], is_special[keep], v / np.linalg.norm(v, axis=1, keepdims=True)

    ids, is_special, q = tokens(query, special)
    _, _, d = tokens(passage, False)
    d = d.astype(np.float16).astype(np.float64)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    w = np.ones(len(ids))
    if weights is not None:
        raw = weights(ids[~is_special])
        w[~is_special] = raw / raw.mean()
    return float((w * (q @ d.T).max(axis=1)).sum())


def test_query_token_weights_and_special_tokens_match_a_numpy_reference(tiny_bi_encoder_dir):
    model = SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu")
    weights = lambda ids: (np.asarray(ids) % 7 + 1).astype(np.float64)  # noqa: E731
    plain = MaxSimReranker(model)
    query, passages = "how many people live in berlin", [d["text"] for d in DOCS]
    unit = plain.with_query_tokens("idf", lambda ids: np.full(len(ids), 3.0))
    np.testing.assert_allclose(unit.score(query, passages), plain.score(query, passages), rtol=1e-5)
    for spec, special in (("idf", False), ("special", False), ("idf+special", True), ("special", True)):
        tokens = QueryTokens.parse(spec)
        ranker = plain.with_query_tokens(tokens, weights)
        expected = [
            reference_maxsim(model, query, p, weights if tokens.weighting else None, tokens.special) for p in passages
        ]
        np.testing.assert_allclose(ranker.score(query, passages), expected, rtol=1e-4, atol=1e-4)
    assert plain.query_tokens == QueryTokens()  # copies do not change the original
    with pytest.raises(ValueError, match="token statistics"):
        plain.with_query_tokens("idf")
    with pytest.raises(ValueError, match="query tokens"):
        QueryTokens.parse("tfidf")


# ------------------------------------------------------------------ reachable from Engine.search
def test_levers_are_options_of_engine_search(tmp_path, tiny_encoder):
    with Engine.create(tmp_path / "c", encoder=tiny_encoder, reranker="maxsim", store_tokens=True) as engine:
        engine.add(DOCS)
        query = "museum in paris"
        off = {"prf": "none", "query_tokens": "plain", "fusion": "none"}
        plain = engine.search(query, k=4, top_n=4, **off)
        assert plain.reranker == "maxsim"
        first = {h.doc_id: h.retrieval_score for h in plain.hits}
        second = {h.doc_id: h.rerank_score for h in plain.hits}
        fused = engine.search(query, k=4, top_n=4, **{**off, "fusion": "rrf"})
        assert fused.reranker == "maxsim"
        order = sorted(first, key=lambda d: -first[d])
        expected = fuse_scores([first[d] for d in order], [second[d] for d in order], Fusion("rrf"))
        assert {h.doc_id: h.rerank_score for h in fused.hits} == pytest.approx(dict(zip(order, expected)))
        # feedback: the second search's scores are the moved query's inner products with the stored vectors
        moved = engine.search(query, k=4, top_n=4, rerank=False, prf="2:0.5")
        q = rocchio(engine.encoder.encode_queries([query])[0], engine.collection.embeddings_of(order[:2]), PRF(2, 0.5))
        vectors = engine.collection.embeddings_of([h.doc_id for h in moved.hits])
        np.testing.assert_allclose([h.retrieval_score for h in moved.hits], vectors @ q, rtol=1e-5, atol=1e-6)
        weighted = engine.search(query, k=4, top_n=4, query_tokens="idf+special", prf="1", fusion="zscore:0.5")
        assert len(weighted.hits) == 4 and weighted.reranker == "maxsim"
        # unnamed levers take MAXSIM_DEFAULTS when MaxSim reranks, and are off without a second stage
        default = engine.search(query, k=4, top_n=4)
        explicit = engine.search(query, k=4, top_n=4, **MAXSIM_DEFAULTS)
        assert [(h.doc_id, h.rerank_score) for h in default.hits] == [(h.doc_id, h.rerank_score) for h in explicit.hits]
        assert [h.retrieval_score for h in engine.search(query, k=4, rerank=False).hits] == sorted(
            first.values(), reverse=True
        )
        for bad in ({"fusion": "best"}, {"prf": "0"}, {"query_tokens": "bm25"}):
            with pytest.raises(UsageError):
                engine.search(query, **bad)


def test_search_command_takes_the_lever_flags(tmp_path, tiny_encoder, capsys):
    import json

    from twostage.cli import main

    with Engine.create(tmp_path / "c", encoder=tiny_encoder, reranker="maxsim", store_tokens=True) as engine:
        engine.add(DOCS)
        expected = engine.search("museum in paris", k=4, top_n=2, prf="1", query_tokens="idf", fusion="rrf")
    levers = ["--prf", "1", "--query-tokens", "idf", "--fusion", "rrf"]
    assert (
        main(
            [
                "search",
                str(tmp_path / "c"),
                "museum in paris",
                "--reranker",
                "maxsim",
                "--k",
                "4",
                "--top",
                "2",
                "--json",
                *levers,
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["doc_id"] for h in hits] == [h.doc_id for h in expected.hits]
    assert main(["search", str(tmp_path / "c"), "museum", "--reranker", "maxsim", "--fusion", "best"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "twostage search: error: fusion method must be one of" in err


# ------------------------------------------------------------------ reachable from eval system specs
def test_eval_system_specs_carry_lever_options(tmp_path, tiny_encoder):
    from twostage.eval.datasets import load_dataset
    from twostage.eval.errors import EvalInputError
    from twostage.eval.harness import EvalConfig, SystemSpec, resolve_systems, run_evaluation
    from twostage.eval.trec import ranked

    spec = resolve_systems(["dense+rerank@3/fusion=rrf/prf=1:0.5"], [10], have_run=False, have_reranker=True)
    assert (
        spec == [SystemSpec("dense", 3, "fusion=rrf/prf=1:0.5")]
        and spec[0].name == "dense+rerank@3/fusion=rrf/prf=1:0.5"
    )
    for bad in ("dense/boost=2", "dense/prf", "run/prf=3"):
        with pytest.raises(EvalInputError):
            resolve_systems([bad], [10], have_run=False, have_reranker=True)
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(f'{{"id": "{d["id"]}", "text": "{d["text"]}"}}\n' for d in DOCS))
    (folder / "queries.tsv").write_text("q1\tmuseum in paris\nq2\tberlin population\n")
    (folder / "qrels.txt").write_text("q1 0 d 1\nq2 0 a 1\n")
    systems = [
        "dense",
        "dense/prf=1:0.5",
        "dense+rerank@3",
        "dense+rerank@3/default",
        "dense+rerank@3/fusion=zscore:0.5",
    ]
    config = EvalConfig(
        encoder=tiny_encoder, reranker="maxsim", systems=systems, index_dir=tmp_path / "index", n_resamples=100
    )
    report = run_evaluation(load_dataset(folder), config)
    assert [r.name for r in report.systems] == systems
    with Engine.open(tmp_path / "index", encoder=tiny_encoder, reranker="maxsim") as engine:
        run = lambda name: [d for d, _ in ranked(dict(report.system(name).run["q1"]))][:3]  # noqa: E731
        ids = lambda **levers: [h.doc_id for h in engine.search("museum in paris", k=3, top_n=3, **levers).hits]  # noqa: E731
        off = {"prf": "none", "query_tokens": "none", "fusion": "none"}
        assert run("dense+rerank@3/fusion=zscore:0.5") == ids(**{**off, "fusion": "zscore:0.5"})
        assert run("dense+rerank@3") == ids(**off) and run("dense+rerank@3/default") == ids()
    assert set(report.system("dense+rerank@3/fusion=zscore:0.5").timings.stages) >= {"encode", "search", "rerank"}
