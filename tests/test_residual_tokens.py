"""Compressed token vectors (2bit / 1bit residual codes, pq product codes): exact packing, MaxSim close to float16 on
real passages, a codec learned when enough tokens exist, in-place conversion that is all-or-nothing, and the CLI."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from twostage.cli import main
from twostage.indexes.collection import Collection
from twostage.indexes.documents import Document
from twostage.indexes.product import ProductCodec, default_subvectors
from twostage.indexes.residual import ResidualCodec, default_centroids
from twostage.indexes.token_store import MIN_TRAIN, TokenStore
from twostage.reranker.maxsim import MaxSimReranker

QUERIES = [
    "How many people live in Berlin?",
    "the largest planet in the solar system",
    "how do cells divide",
    "fermented bread starter",
    "art museums in Paris",
]


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("bits", [1, 2])
def test_codes_pack_each_dimension_into_its_bucket(bits):
    rng = np.random.default_rng(0)
    sample = unit(rng, 3000, 32)
    codec = ResidualCodec.train(sample, bits, n_centroids=16)
    assert codec.bytes_per_token == 2 + 32 * bits // 8
    x = unit(rng, 50, 32)
    ids, packed = codec.encode(x)
    assert ids.dtype == np.uint16 and packed.shape == (50, 32 * bits // 8) and packed.dtype == np.uint8
    residual = x - codec.centroids[ids]
    buckets = (residual[:, :, None] > codec.cutoffs[None]).sum(axis=2)
    expected = codec.centroids[ids] + codec.weights[np.arange(32)[None, :], buckets]
    np.testing.assert_allclose(codec.decode(ids, packed), expected, rtol=0, atol=1e-6)
    assert np.all(np.diff(codec.weights, axis=1) >= 0) and np.all(np.diff(codec.cutoffs, axis=1) >= 0)
    again = ResidualCodec.from_blobs(**codec.to_blobs())
    np.testing.assert_allclose(again.weights, codec.weights)
    np.testing.assert_allclose(again.centroids, codec.centroids, atol=1e-3)  # stored as float16
    assert default_centroids(1_254_069, 65_536) == 1024 and default_centroids(5_000, 5_000) == 64


def test_product_codes_are_each_rotated_sub_vectors_nearest_sub_centroid():
    rng = np.random.default_rng(1)
    codec = ProductCodec.train(unit(rng, 3000, 32), subvectors=4, nbits=4)
    assert codec.bytes_per_token == 4 * 4 // 8 and codec.dim == 32 and codec.codebooks.shape == (4, 16, 8)
    np.testing.assert_allclose(codec.rotation @ codec.rotation.T, np.eye(32), atol=1e-5)  # orthonormal
    x = unit(rng, 50, 32)
    codes = codec.encode(x)
    assert codes.shape == (50, 2) and codes.dtype == np.uint8
    subs = (x @ codec.rotation.T).reshape(50, 4, 1, 8)  # brute force: the nearest of each sub-vector's 16
    nearest = np.argmin(((subs - codec.codebooks[None]) ** 2).sum(axis=3), axis=2)  # (50, 4)
    expected = codec.codebooks[np.arange(4)[None, :], nearest].reshape(50, 32) @ codec.rotation
    np.testing.assert_allclose(codec.decode(codes), expected, rtol=0, atol=1e-5)
    again = ProductCodec.from_blobs(**codec.to_blobs())
    np.testing.assert_array_equal(again.decode(codes), codec.decode(codes))
    odd = ProductCodec.train(unit(rng, 3000, 32), subvectors=4, nbits=5)  # 20 bits: codes straddle bytes
    codes = odd.encode(x)
    assert codes.shape == (50, 3)
    np.testing.assert_allclose(odd.decode(codes), odd._pq.decode(codes) @ odd.rotation, atol=1e-5)  # as faiss
    plain = ProductCodec.train(unit(rng, 300, 32), subvectors=4, rotate=False)  # 300 points: 4 sub-centroids
    assert plain.nbits == 2 and plain.rotation is None
    assert ProductCodec.from_blobs(**plain.to_blobs()).rotation is None
    assert default_subvectors(384) == 32 and default_subvectors(16) == 1 and default_subvectors(24) == 2


def test_compressed_tokens_score_maxsim_close_to_float16_on_real_passages(tmp_path, minilm, example_tokens):
    ids, tokens = example_tokens
    stores = {}
    for encoding in ("float16", "int8", "2bit", "1bit", "pq"):
        store = TokenStore.open(tmp_path / f"{encoding}.sqlite", encoding=encoding)
        store.put_many(ids, tokens)
        assert store.train_pending() == (encoding in ("2bit", "1bit", "pq"))  # ~2,100 tokens >= MIN_TRAIN
        stores[encoding] = store
    sizes = {e: s.bytes_per_passage() for e, s in stores.items()}
    tokens_per_passage = sum(len(t) for t in tokens) / len(tokens)
    assert sizes["2bit"] == pytest.approx(tokens_per_passage * 98) and sizes["1bit"] == pytest.approx(
        tokens_per_passage * 50
    )
    assert sizes["1bit"] <= 3_200 and sizes["int8"] / sizes["2bit"] > 3.9 and sizes["int8"] / sizes["1bit"] > 7.7
    pq = stores["pq"].codec  # ~2,100 tokens: 5-bit codes (9 bits, the full size, needs 39 x 512 = 19,968 tokens)
    assert (pq.subvectors, pq.nbits) == (32, 5) and sizes["pq"] == pytest.approx(tokens_per_passage * 20)
    candidates = [[_Candidate(i) for i in ids]] * len(QUERIES)
    reranker, scores = MaxSimReranker(minilm), {}
    for encoding, store in stores.items():
        reranker.token_store = store.get_many
        scores[encoding] = np.stack(reranker.score_candidates(QUERIES, candidates))
    reference = scores["float16"]
    bounds = (("int8", 0.001, 0.002), ("2bit", 0.03, 0.2), ("1bit", 0.06, 0.35), ("pq", 0.045, 0.3))
    for encoding, mean, worst in bounds:
        got = scores[encoding]
        error = np.abs(got - reference) / reference.max(axis=1, keepdims=True)  # relative to each query's best score
        assert error.mean() < mean and error.max() < worst, (encoding, error.mean(), error.max())
        for q in range(len(QUERIES)):  # the top passage stays in the compressed top 3
            assert np.argmax(reference[q]) in np.argsort(-got[q])[:3], (encoding, QUERIES[q])
    for store in stores.values():
        store.close()


class _Candidate:
    """The fields MaxSim reads from a first-stage candidate: doc id (for the store) and text (unused here)."""

    def __init__(self, doc_id: str):
        self.doc_id, self.text, self.encoding_text = doc_id, "", ""


def test_codec_is_learned_in_the_write_that_brings_enough_tokens_and_conversion_is_all_or_nothing(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("twostage.indexes.collection.TRAIN_AT", MIN_TRAIN)  # TRAIN_AT (65,536) in a real collection
    rng = np.random.default_rng(3)
    docs = [Document(f"d{i}", f"text {i}") for i in range(40)]
    tokens = [unit(rng, 30, 16) for _ in docs]  # 1,200 tokens: enough to learn a codec
    embeddings = unit(rng, len(docs), 8)
    with Collection.create(
        tmp_path / "c",
        model_name="m",
        model_fingerprint="f",
        dimension=8,
        index_type="flat",
        store_tokens=True,
        token_pool=1,
    ) as collection:
        store = collection.token_store
        collection.upsert(docs[:1], embeddings[:1], tokens=tokens[:1])
        collection.commit()  # 30 tokens: kept as int8 for now
        assert store.codec is None and store.encoding == "2bit" and store.bytes_per_passage() == 30 * (16 + 4)
        collection.upsert(docs[:20], embeddings[:20], tokens=tokens[:20])
        collection.commit()  # 600 tokens: a commit learns nothing (a small store stays int8)
        assert store.codec is None and store.stats().tokens == 600
        collection.upsert(docs, embeddings, tokens=tokens)  # 1,200 tokens: learned inside this write
        assert store.codec is not None and store.bytes_per_passage() == 30 * (2 + 16 * 2 // 8)
        before = store.get_many([d.id for d in docs])
        assert all(
            np.mean(np.sum(b / np.linalg.norm(b, axis=1, keepdims=True) * t, axis=1)) > 0.8
            for b, t in zip(before, tokens)
        )
        collection.upsert(docs[:1], embeddings[:1], tokens=tokens[:1])  # new rows use the learned codec
        np.testing.assert_allclose(store.get("d0"), store.codec.decode(*store.codec.encode(tokens[0])), atol=1e-6)

        def fail(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr("twostage.indexes.token_store._write", fail)  # dies after the codec row was replaced
        with pytest.raises(OSError):
            collection.convert_tokens("1bit")
        assert store.encoding == "2bit" and store.codec.bits == 2
        monkeypatch.undo()
        with Collection.open(tmp_path / "c") as reopened:  # the file is as it was: same codec, same vectors
            again = reopened.token_store
            assert again.encoding == "2bit" and again.codec.bits == 2
            np.testing.assert_allclose(again.get("d5"), before[5], atol=1e-6)
        collection.convert_tokens("1bit")
        assert store.bytes_per_passage() == 30 * (2 + 16 // 8)
        assert json.loads((tmp_path / "c" / "manifest.json").read_text())["extra"]["token_store"] == {
            "encoding": "1bit"
        }
        collection.convert_tokens("float16")
        assert store.codec is None and store.stats().codec_bytes == 0 and store.get("d1").dtype == np.float16


def twostage(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_tokens_command_converts_in_place_and_refuses_collections_without_tokens(tmp_path):
    rng = np.random.default_rng(4)
    docs = [Document(f"d{i}", f"text {i}") for i in range(40)]
    with Collection.create(
        tmp_path / "c", model_name="m", model_fingerprint="f", dimension=8, index_type="flat", store_tokens="int8"
    ) as collection:
        collection.upsert(docs, unit(rng, 40, 8), tokens=[unit(rng, 30, 16) for _ in docs])
        collection.commit()
    code, out, err = twostage("tokens", str(tmp_path / "c"), "--convert", "2bit")
    assert code == 0, err
    assert "2bit tokens, 40 passages, 30.0 tokens and 600 -> 180 bytes per passage" in out and "codec" in out
    code, out, err = twostage("tokens", str(tmp_path / "c"))
    assert code == 0 and "2bit tokens" in out and "->" not in out
    code, out, err = twostage("tokens", str(tmp_path / "c"), "--convert", "pq")  # 1 sub-vector x 4 bits: 1 byte
    assert code == 0, err
    assert "pq tokens, 40 passages, 30.0 tokens and 180 -> 30 bytes per passage" in out and "codec" in out
    with Collection.create(
        tmp_path / "small", model_name="m", model_fingerprint="f", dimension=8, store_tokens="2bit", token_pool=1
    ) as small:
        small.upsert(docs, unit(rng, 40, 8), tokens=[unit(rng, 30, 16) for _ in docs])
        small.commit()
    code, out, err = twostage("tokens", str(tmp_path / "small"))  # too few tokens for a codec: says so
    assert code == 0 and "2bit tokens, 40 passages, 30.0 tokens and 600 bytes per passage" in out
    assert "(kept as int8 until 65,536 tokens are stored, 1,200 so far; --convert 2bit compresses them now)" in out
    code, out, err = twostage("tokens", str(tmp_path / "small"), "--convert", "2bit")
    assert code == 0 and "600 -> 180 bytes per passage" in out and "kept as int8" not in out
    with Collection.create(tmp_path / "plain", model_name="m", model_fingerprint="f", dimension=8) as plain:
        plain.commit()
    code, out, err = twostage("tokens", str(tmp_path / "plain"), "--convert", "1bit")
    assert code == 2 and "stores no token vectors" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error, status 2
        twostage("tokens", str(tmp_path / "c"), "--convert", "3bit")
    assert exit_.value.code == 2


def test_a_failed_conversion_to_pq_leaves_the_store_as_it_was_and_new_rows_use_the_codec(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    ids, arrays = [f"d{i}" for i in range(40)], [unit(rng, 30, 16) for _ in range(40)]
    store = TokenStore.open(tmp_path / "t.sqlite", encoding="2bit")
    store.put_many(ids, arrays)
    assert store.train_pending()
    before = store.get_many(ids)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("twostage.indexes.token_store._write", fail)
    with pytest.raises(OSError):
        store.convert("pq")
    monkeypatch.undo()
    again = TokenStore.open(tmp_path / "t.sqlite")
    assert again.encoding == "2bit" and isinstance(again.codec, ResidualCodec) and again.stats().codec_bytes > 0
    np.testing.assert_array_equal(again.get("d3"), before[3])
    store.convert("pq")
    assert again.get("d3").shape == (30, 16)  # another connection's read picks the conversion up
    assert again.encoding == "pq" and isinstance(again.codec, ProductCodec)
    again.put_many(["d9"], [arrays[9]])  # a new row is coded with the stored codec
    np.testing.assert_array_equal(store.get("d9"), store.codec.decode(store.codec.encode(arrays[9])))
    assert store.bytes_per_passage() == 30 * store.codec.bytes_per_token
    store.close()
    again.close()


def test_a_store_whose_pq_table_predates_rotation_gains_the_column(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "t.sqlite") as con:
        con.execute(
            "CREATE TABLE token_pq (id INTEGER PRIMARY KEY CHECK (id = 1), nbits INTEGER NOT NULL, "
            "m INTEGER NOT NULL, dim INTEGER NOT NULL, codebooks BLOB NOT NULL)"
        )
    con.close()
    rng = np.random.default_rng(7)
    store = TokenStore.open(tmp_path / "t.sqlite", encoding="pq")
    store.put_many([f"d{i}" for i in range(40)], [unit(rng, 30, 24) for _ in range(40)])
    assert store.train_pending() and store.codec.rotation is not None
    reopened = TokenStore.open(tmp_path / "t.sqlite")
    assert reopened.encoding == "pq" and reopened.codec.rotation.shape == (24, 24)
    reopened.close()
    store.close()


def test_a_read_only_store_from_before_pq_still_reads(tmp_path):
    from twostage.indexes.document_store import DocumentStore

    rng = np.random.default_rng(8)
    store = TokenStore.open(tmp_path / "t.sqlite", encoding="2bit")
    store.put_many([f"d{i}" for i in range(40)], [unit(rng, 30, 16) for _ in range(40)])
    assert store.train_pending()
    before = store.get("d4")
    with store.documents.transaction() as con:
        con.execute("DROP TABLE token_pq")  # as a collection written before pq existed
    store.close()
    reader = TokenStore(DocumentStore(tmp_path / "t.sqlite", read_only=True))
    assert reader.encoding == "2bit" and reader.stats().codec_bytes > 0
    np.testing.assert_array_equal(reader.get("d4"), before)
    reader.documents.close()


def test_a_conversion_by_another_connection_is_seen_by_readers_and_writers(tmp_path):
    rng = np.random.default_rng(5)
    ids, arrays = [f"d{i}" for i in range(40)], [unit(rng, 30, 16) for _ in range(40)]
    first = TokenStore.open(tmp_path / "t.sqlite", encoding="int8")
    first.put_many(ids, arrays)
    second = TokenStore.open(tmp_path / "t.sqlite")  # another connection (as another process would have)
    assert second.encoding == "int8" and second.get("d1").shape == (30, 16)
    first.convert("2bit")
    np.testing.assert_allclose(second.get("d1"), first.get("d1"))
    assert second.encoding == "2bit" and second.codec is not None
    second.put_many(["d2"], [arrays[2]])
    np.testing.assert_allclose(first.get("d2"), first.codec.decode(*first.codec.encode(arrays[2])), atol=1e-6)
    first.close()
    second.close()
