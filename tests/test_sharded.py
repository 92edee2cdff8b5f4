"""Sharded collections without Ray: exact equality with one collection, routing of writes, info and the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import random

import pytest
from tiny_models import WORDS

from twostage.cli import main
from twostage.engine import Engine
from twostage.indexes.collection import Collection
from twostage.indexes.errors import CollectionError
from twostage.indexes.sharded import ShardedCollection, merge_top_k, open_collection, shard_name, shard_of

SHARDS = 4


def corpus(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct passages of the tiny models' words (no two alike, so no score ties between documents)."""
    rng = random.Random(seed)
    texts: dict[str, None] = {}
    while len(texts) < n:
        texts[" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))] = None
    return [{"id": f"p{i:05d}", "text": t, "topic": f"t{i % 3}"} for i, t in enumerate(texts)]


def queries(n: int = 8, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(n)]


def twostage(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bi_encoder_dir):
    """The same 240 passages as one collection and as 4 shards (flat index, stored tokens)."""
    root = tmp_path_factory.mktemp("sharded")
    docs = corpus(240)
    for name, shards in (("one", None), ("four", SHARDS)):
        with Engine.create(
            root / name,
            model=str(tiny_bi_encoder_dir),
            reranker=None,
            index_type="flat",
            store_tokens="int8",
            shards=shards,
        ) as engine:
            engine.add(docs)
    return root, docs


def assert_same_hits(single, sharded, reranked: bool) -> None:
    """The same documents with the same scores (within float tolerance), in the same order; only documents whose
    scores tie within that tolerance may trade places (float sums in another order can tip such a tie)."""
    for a, b in zip(single, sharded, strict=True):
        assert len(a.hits) == len(b.hits)
        theirs = {h.doc_id: h for h in b.hits}
        assert theirs.keys() == {h.doc_id for h in a.hits}
        for x, y in zip(a.hits, b.hits):
            assert x.retrieval_score == pytest.approx(theirs[x.doc_id].retrieval_score, abs=1e-5)
            if reranked:
                assert x.rerank_score == pytest.approx(theirs[x.doc_id].rerank_score, abs=1e-5)
            if x.doc_id != y.doc_id:
                score = (lambda h: h.rerank_score) if reranked else (lambda h: h.retrieval_score)
                assert score(x) == pytest.approx(score(y), abs=1e-5), (x.doc_id, y.doc_id)


@pytest.mark.parametrize("reranker", [None, "maxsim", "tiny-cross-encoder"])
def test_four_shards_return_exactly_the_single_collection_results(built, reranker, tiny_cross_encoder_dir):
    root, _ = built
    spec = str(tiny_cross_encoder_dir) if reranker == "tiny-cross-encoder" else reranker
    with Engine.open(root / "one", reranker=spec) as one, Engine.open(root / "four", reranker=spec) as four:
        assert isinstance(four.collection, ShardedCollection) and len(four.collection) == len(one.collection)
        for k, filter in ((50, None), (240, None), (20, {"topic": "t1"})):
            assert_same_hits(
                one.search_many(queries(), k=k, top_n=k, rerank=spec is not None, filter=filter),
                four.search_many(queries(), k=k, top_n=k, rerank=spec is not None, filter=filter),
                reranked=spec is not None,
            )


def test_every_shard_is_an_ordinary_collection(built):
    root, docs = built
    counts = []
    for i in range(SHARDS):
        with Collection.open(root / "four" / f"shard-{i:03d}") as shard:
            counts.append(len(shard))
            ids = {d.id for d in shard.iter_documents()}
            assert all(shard_of(doc_id, SHARDS) == i for doc_id in ids)
    assert sum(counts) == len(docs) and min(counts) > 0


def test_routing_is_a_stable_hash():
    # fixed values: BLAKE2b of the UTF-8 id, so every process and machine routes alike (never Python's hash())
    assert [shard_of(d, 4) for d in ("p00000", "p00001", "d-ü", "")] == [
        shard_of(d, 4) for d in ("p00000", "p00001", "d-ü", "")
    ]
    assert (
        shard_of("p00000", 4)
        == int.from_bytes(__import__("hashlib").blake2b(b"p00000", digest_size=8).digest(), "big") % 4
    )
    assert merge_top_k([[("b", 0.5), ("a", 0.1)], [("a2", 0.5), ("c", 0.9)]], 3) == [
        ("c", 0.9),
        ("a2", 0.5),
        ("b", 0.5),
    ]


def test_writes_reach_the_owning_shard(tmp_path, tiny_bi_encoder_dir):
    docs = corpus(60, seed=3)
    with Engine.create(tmp_path / "s", model=str(tiny_bi_encoder_dir), reranker=None, shards=3) as engine:
        engine.add(docs)
        report = engine.add([{"id": docs[0]["id"], "text": "a replaced passage about berlin"}, docs[1]])
        assert (report.replaced, report.unchanged, report.added) == (1, 1, 0)
        deleted = engine.delete([docs[2]["id"], "no-such-id"])
        assert deleted.deleted == [docs[2]["id"]] and deleted.missing == ["no-such-id"]
        owner = engine.collection.shards[shard_of(docs[0]["id"], 3)]
        assert owner.get([docs[0]["id"]])[0].text == "a replaced passage about berlin"
        assert engine.collection.get([docs[2]["id"]]) == [None]
        assert len(engine.collection) == 59
        hits = engine.search("a replaced passage about berlin", k=5, rerank=False).hits
        assert hits[0].doc_id == docs[0]["id"]


def test_cli_index_shards_info_and_resume(tmp_path, tiny_bi_encoder_dir):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in corpus(80, seed=5)), encoding="utf-8")
    directory = tmp_path / "idx"
    code, out, err = twostage(
        "index", str(path), "-i", str(directory), "--model", str(tiny_bi_encoder_dir), "--shards", "4", "-q"
    )
    assert code == 0, err
    code, out, err = twostage("info", str(directory), "--json")
    info = json.loads(out)
    assert info["shard_count"] == 4 and info["document_count"] == 80
    assert sum(s["document_count"] for s in info["shards"]) == 80
    code, out, _ = twostage("info", str(directory))
    assert "shard-003" in out and "shard_count" in out
    code, out, err = twostage(
        "index", str(path), "-i", str(directory), "--model", str(tiny_bi_encoder_dir), "--shards", "4", "-q"
    )
    assert code == 0 and "0 added" in out and "80 unchanged" in out, out + err
    code, out, err = twostage(
        "index", str(path), "-i", str(directory), "--model", str(tiny_bi_encoder_dir), "--shards", "2", "-q"
    )
    assert code == 2 and "has 4 shards" in err and "Traceback" not in err
    code, out, err = twostage("delete", str(directory), "p00001")
    assert code == 0 and "79 remain" in out


def test_damaged_top_manifest_is_a_clear_error(built, tmp_path):
    (tmp_path / "shards.json").write_text('{"format_version": 1, "shard_count": "four"}', encoding="utf-8")
    with pytest.raises(CollectionError, match=r"shards.json: field 'routing' is missing|field 'shard_count'"):
        ShardedCollection.open(tmp_path)
    code, _, err = twostage("info", str(tmp_path))
    assert code == 2 and "shards.json" in err


def test_lexical_first_stage_merges_shards(built):
    """BM25 per shard keeps each shard's own statistics, so scores differ from one collection's (documented); the
    documents that match are the same, and hybrid search runs on shards."""
    root, docs = built
    with Engine.open(root / "one", reranker=None) as one, Engine.open(root / "four", reranker=None) as four:
        for query in queries(3):
            a = one.search(query, k=len(docs), top_n=len(docs), rerank=False, first_stage="bm25")
            b = four.search(query, k=len(docs), top_n=len(docs), rerank=False, first_stage="bm25")
            assert {h.doc_id for h in a.hits} == {h.doc_id for h in b.hits} and a.hits
            scores = [h.retrieval_score for h in b.hits]
            assert scores == sorted(scores, reverse=True)
        assert four.search(queries(1)[0], k=20, rerank=False, first_stage="hybrid").hits


@pytest.mark.parametrize("shards", [None, 2])
def test_read_manifest_reads_either_kind_without_opening_it(tmp_path, shards):
    from twostage.indexes.sharded import ShardedCollection, read_manifest

    args = dict(model_name="m", model_fingerprint="f" * 64, dimension=8, extra={"backend": "onnx-int8"})
    made = (
        Collection.create(tmp_path / "c", **args)
        if shards is None
        else ShardedCollection.create(tmp_path / "c", shards=shards, **args)
    )
    made.close()
    manifest = read_manifest(tmp_path / "c")
    assert manifest.extra["backend"] == "onnx-int8" and manifest.dimension == 8


def test_a_write_stops_before_any_shard_changes_when_one_is_busy(tmp_path, built):
    """add, delete and tokens --convert take every shard's writer lock first: with one shard held by another writer
    they fail with one line (exit 2) and no shard has changed."""
    import shutil

    from twostage.indexes.lock import WriterLock

    directory = tmp_path / "four"
    shutil.copytree(built[0] / "four", directory)
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps(doc) + "\n" for doc in corpus(300, seed=7)[240:]), encoding="utf-8")

    def counts() -> list[int]:
        with open_collection(directory) as collection:
            return [len(shard) for shard in collection.shards]

    def encodings() -> list[str]:
        with open_collection(directory) as collection:
            return [shard.token_store.encoding for shard in collection.shards]

    before = counts()
    with WriterLock(directory / shard_name(2)).holding():
        for args in (
            ["add", str(directory), str(extra), "-q"],
            ["delete", str(directory), "p00000", "p00001", "p00002"],
            ["tokens", str(directory), "--convert", "2bit"],
        ):
            code, _, err = twostage(*args, "--wait", "0.2")
            last = err.strip().splitlines()[-1]  # (in this process the model's loading bar may come first)
            assert code == 2 and last.startswith("twostage ") and "is being changed by another process" in last, args
    assert counts() == before and encodings() == ["int8"] * SHARDS
