"""Collection: SQLite + FAISS + manifest in one directory; upsert/replace/delete/filter/search, reopen, crash recovery."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twostage.indexes.collection import Collection
from twostage.indexes.document_store import DocumentStore, content_hash
from twostage.indexes.documents import Document
from twostage.indexes.errors import CollectionError

DIM = 16


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def docs(n: int, prefix: str = "d") -> list[Document]:
    return [
        Document(
            f"{prefix}{i}",
            f"text {i}",
            f"title {i}" if i % 2 else None,
            {"year": 2000 + i % 5, "lang": "en" if i % 2 else "de"},
        )
        for i in range(n)
    ]


def create(path, index_type: str = "flat", **kwargs) -> Collection:
    return Collection.create(
        path, model_name="m", model_fingerprint="fp", dimension=DIM, index_type=index_type, **kwargs
    )


def search_ids(collection: Collection, vectors: np.ndarray, k: int, **kwargs) -> list[list[str]]:
    return [[doc_id for doc_id, _ in hits] for hits in collection.search(vectors, k, **kwargs)]


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivfpq", "IVF4,Flat"])
def test_upsert_replace_delete_search_reopen(tmp_path, index_type):
    vectors = unit_vectors(300)
    with create(tmp_path / "c", index_type) as collection:
        result = collection.upsert(docs(300), vectors)
        assert len(result.added) == 300 and result.replaced == {} and len(collection) == 300
        assert (
            search_ids(collection, vectors[:5], 1) == [["d0"], ["d1"], ["d2"], ["d3"], ["d4"]] or index_type == "hnsw"
        )

        # replace d1 with new text and a vector equal to d0's: fresh internal id, old vector gone
        old_internal = int(result.new_ids[1])
        again = collection.upsert([Document("d1", "new text")], vectors[:1])
        assert (
            again.replaced == {"d1": old_internal}
            and again.added == []
            and int(again.new_ids[0]) > int(result.new_ids[-1])
        )
        top = collection.search(vectors[:1], 2)[0]
        assert {doc_id for doc_id, _ in top} == {"d0", "d1"}
        assert collection.get(["d1", "nope"]) == [Document("d1", "new text"), None]

        deleted = collection.delete(["d2", "nope", "d3", "d2"])
        assert (deleted.deleted, deleted.missing) == (["d2", "d3"], ["nope"])
        everything = search_ids(collection, vectors[:3], 10_000)
        for ids in everything:
            assert "d2" not in ids and "d3" not in ids and len(ids) == len(set(ids))
            assert len(ids) >= (298 if index_type != "hnsw" else 290)

    with Collection.open(tmp_path / "c") as collection:
        assert not collection.recovered
        assert len(collection) == 298 and collection.stats()["vector_count"] == 298
        ids = search_ids(collection, vectors[2:4], 10_000)
        assert all("d2" not in row and "d3" not in row for row in ids)
        assert collection.get(["d1"])[0].text == "new text"
        assert collection.get(["d7"])[0] == docs(8)[7]


def test_metadata_filter(tmp_path):
    vectors = unit_vectors(50)
    with create(tmp_path / "c") as collection:
        collection.upsert(docs(50), vectors)
        years = {doc_id for row in search_ids(collection, vectors[:2], 100, filter={"year": "2003"}) for doc_id in row}
        assert years == {f"d{i}" for i in range(50) if i % 5 == 3}
        both = search_ids(collection, vectors[:1], 100, filter={"year": 2003, "lang": "en"})[0]
        assert set(both) == {f"d{i}" for i in range(50) if i % 5 == 3 and i % 2}
        assert search_ids(collection, vectors[:1], 100, filter={"nokey": "1"}) == [[]]
        assert search_ids(collection, vectors[:1], 100, filter={"lang": "fr"}) == [[]]
        assert collection.store.filter_ids({"year": 2003.0}).size == 10
        collection.delete(["d3"])
        assert "d3" not in search_ids(collection, vectors[3:4], 100, filter={"year": "2003"})[0]


def test_filter_on_large_sets_uses_index_selector(tmp_path, monkeypatch):
    import twostage.indexes.vector_store as module  # the collection's vector store searches filtered sets

    monkeypatch.setattr(module, "EXACT_FILTER_MAX", 5)  # force the FAISS IDSelectorBatch path
    vectors = unit_vectors(100)
    with create(tmp_path / "c", "hnsw") as collection:
        collection.upsert(docs(100), vectors)
        collection.delete(["d1"])
        hits = search_ids(collection, vectors[:2], 100, filter={"lang": "en"})
        assert all(set(row) <= {f"d{i}" for i in range(3, 100, 2)} and len(row) >= 45 for row in hits)


def test_crash_after_sqlite_commit_is_recovered_on_open(tmp_path):
    """Upserts committed to SQLite but no commit(): the FAISS file is stale, open() rebuilds it from SQLite."""
    vectors = unit_vectors(120)
    collection = create(tmp_path / "c", "hnsw")
    collection.upsert(docs(100), vectors[:100])
    collection.commit()
    collection.upsert(docs(20, prefix="late"), vectors[100:])
    collection.delete(["d5"])
    collection.store._con.close()  # simulate kill -9: no commit(), no close()
    collection._writer.release()  # ...and the OS drops a dead process's writer lock

    stale = (tmp_path / "c" / "vectors.faiss").stat().st_mtime
    reopened = Collection.open(tmp_path / "c")
    assert reopened.recovered
    assert len(reopened) == 119 and reopened.stats()["vector_count"] == 119
    assert search_ids(reopened, vectors[100:101], 1) == [["late0"]]
    assert "d5" not in search_ids(reopened, vectors[5:6], 200)[0]
    reopened.close()
    again = Collection.open(tmp_path / "c")  # an open never writes: the index is rebuilt in memory again ...
    assert again.recovered and (tmp_path / "c" / "vectors.faiss").stat().st_mtime == stale
    again.hold_writer()  # ... until the next writer saves it
    again.close()
    last = Collection.open(tmp_path / "c")
    assert not last.recovered and last.manifest.document_count == 119
    last.close()


def test_crash_during_create_or_save(tmp_path):
    vectors = unit_vectors(10)
    with create(tmp_path / "c") as collection:
        collection.upsert(docs(10), vectors)
    (tmp_path / "c" / "vectors.faiss").write_bytes(b"half a file")  # a torn write (atomic writes prevent it)
    (tmp_path / "c" / ".vectors.faiss.abc123.tmp").write_bytes(b"leftover")
    with Collection.open(tmp_path / "c") as collection:
        assert collection.recovered and len(collection.search(vectors[:1], 100)[0]) == 10
    assert (tmp_path / "c" / ".vectors.faiss.abc123.tmp").exists()  # a reader writes nothing
    with Collection.open(tmp_path / "c") as collection:
        collection.delete(["d0"])  # the next writer saves the repaired index and sweeps the litter
    assert not (tmp_path / "c" / ".vectors.faiss.abc123.tmp").exists()
    with Collection.open(tmp_path / "c") as collection:
        assert not collection.recovered and len(collection) == 9
    # a collection that lost its manifest but still holds documents is not created over (only with overwrite)
    (tmp_path / "c" / "manifest.json").unlink()
    assert not Collection.exists(tmp_path / "c")
    with pytest.raises(CollectionError, match="has no manifest.json but its documents.sqlite holds 9 documents"):
        create(tmp_path / "c")
    create(tmp_path / "c", overwrite=True).close()
    # a directory left by an interrupted create (no manifest yet, no documents, only our files) may be created over
    create(tmp_path / "e").close()
    (tmp_path / "e" / "manifest.json").unlink()
    create(tmp_path / "e").close()


def test_hnsw_commit_compacts_tombstones(tmp_path):
    vectors = unit_vectors(100)
    with create(tmp_path / "c", "hnsw") as collection:
        collection.upsert(docs(100), vectors)
        collection.delete([f"d{i}" for i in range(10)])
        assert collection.index.tombstone_count == 10
        collection.commit()  # ratio 0.1: kept
        assert collection.index.tombstone_count == 10
        collection.delete([f"d{i}" for i in range(10, 40)])
        collection.commit()  # ratio 0.4: compacted
        assert collection.index.tombstone_count == 0 and len(collection.index) == 60
        assert collection.stats()["tombstones"] == 0


def test_manifest_and_directory_errors(tmp_path):
    with pytest.raises(CollectionError, match="does not exist"):
        Collection.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CollectionError, match="manifest.json is missing"):
        Collection.open(tmp_path / "plain")
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(CollectionError, match="not empty and is not a collection"):
        create(tmp_path / "plain")

    create(tmp_path / "c").close()
    with pytest.raises(CollectionError, match="already holds a collection"):
        create(tmp_path / "c")
    manifest = tmp_path / "c" / "manifest.json"
    good = manifest.read_text()
    manifest.write_text("{not json")
    with pytest.raises(CollectionError, match=r"manifest.json: not valid JSON \(.*line 1, column 2\)"):
        Collection.open(tmp_path / "c")
    manifest.write_text(json.dumps({**json.loads(good), "format_version": 99}))
    with pytest.raises(CollectionError, match="format 99 is newer"):
        Collection.open(tmp_path / "c")
    manifest.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "dimension"}))
    with pytest.raises(CollectionError, match="field 'dimension' is missing"):
        Collection.open(tmp_path / "c")
    with pytest.raises(CollectionError, match="unknown index type"):
        create(tmp_path / "d", "Bogus9")


def test_overwrite_and_manifest_contents(tmp_path):
    with create(tmp_path / "c", extra={"note": "x"}) as collection:
        collection.upsert(docs(5), unit_vectors(5))
    with create(tmp_path / "c", "hnsw", overwrite=True) as collection:
        assert len(collection) == 0
        collection.upsert(docs(3), unit_vectors(3))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["index_type"] == "hnsw" and manifest["factory"] == "HNSW32"
    assert manifest["metric"] == "inner_product" and manifest["normalized"] is True
    assert manifest["document_count"] == manifest["vector_count"] == 3 and manifest["generation"] >= 1
    with Collection.open(tmp_path / "c") as collection:
        stats = collection.stats()
        assert stats["model_name"] == "m" and stats["dimension"] == DIM and stats["disk_bytes"] > 0
        assert collection.hashes(["d1", "zz"]) == {"d1": content_hash(docs(3)[1])}


def test_rebuild_index_changes_type(tmp_path):
    vectors = unit_vectors(40)
    with create(tmp_path / "c") as collection:
        collection.upsert(docs(40), vectors)
        collection.rebuild_index("hnsw")
        assert collection.manifest.factory == "HNSW32" and len(collection.index) == 40
    with Collection.open(tmp_path / "c") as collection:
        assert collection.index.factory == "HNSW32" and not collection.recovered


def test_document_store_basics(tmp_path):
    store = DocumentStore(tmp_path / "d.sqlite")
    assert store._con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    result = store.upsert(docs(3), unit_vectors(3))
    assert store.generation == 1 and store.count() == 3
    store.delete(["d2"])
    result2 = store.upsert([Document("new", "t")], unit_vectors(1))
    assert int(result2.new_ids[0]) > int(result.new_ids[-1])  # AUTOINCREMENT: the deleted top id is not reused
    batches = list(store.iter_embeddings(batch=2))
    assert [len(ids) for ids, _ in batches] == [2, 1]
    np.testing.assert_array_equal(batches[0][1], unit_vectors(3)[:2])
    with pytest.raises(ValueError, match="twice"):
        store.upsert([Document("a", "x"), Document("a", "y")], unit_vectors(2))
    with pytest.raises(ValueError, match="dimension"):
        store.upsert([Document("a", "x")], np.zeros((1, 3), dtype=np.float32))
    assert store.count() == 3 and store.generation == 3  # failed upserts rolled back, no bump
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.delete(["d0"])
            raise RuntimeError("boom")
    assert store.get(["d0"])[0] is not None
    store.close()


def test_auto_index_grows_with_the_collection(tmp_path, monkeypatch):
    import twostage.indexes.faiss_factory as vector_index  # where the auto index type's thresholds live

    monkeypatch.setattr(vector_index, "FLAT_BELOW", 50)
    vectors = unit_vectors(60)
    with create(tmp_path / "c", "auto") as collection:
        assert collection.index.factory == "Flat"
        collection.upsert(docs(40), vectors[:40])
        collection.commit()
        assert collection.index.factory == "Flat"
        collection.upsert(docs(60)[40:], vectors[40:])
        collection.commit()
        assert collection.index.factory == "HNSW32" and len(collection.index) == 60
        assert collection.manifest.index_type == "auto" and collection.manifest.factory == "HNSW32"
    big = create(tmp_path / "big", "auto", expected_size=500)
    assert big.index.factory == "HNSW32"
    big.close()


def test_an_upgrade_lets_the_old_index_go_first_and_a_failed_one_leaves_it_searchable(tmp_path, monkeypatch):
    """The 'auto' upgrade drops the flat index before filling the HNSW one (never both in memory); if the build
    fails, the collection still answers from an index of the old kind, and the next commit upgrades."""
    import twostage.indexes.faiss_factory as vector_index
    from twostage.indexes.vector_index import VectorIndex

    monkeypatch.setattr(vector_index, "FLAT_BELOW", 50)
    vectors = unit_vectors(60)
    real_rebuild, seen = VectorIndex.rebuild, []

    def failing_rebuild(self, batches, **kwargs):
        seen.append(len(collection.index))  # what the collection holds while the new index fills
        raise MemoryError("no room for the new index")

    with create(tmp_path / "c", "auto") as collection:
        collection.upsert(docs(60), vectors)
        monkeypatch.setattr(VectorIndex, "rebuild", failing_rebuild)
        with pytest.raises(MemoryError):
            collection.commit()
        assert seen == [0]  # the flat index was let go before the HNSW one filled
        assert collection.index.factory == "Flat" and len(collection.index) == 60
        assert collection.search(vectors[:1], 1)[0][0][0] == "d0"
        monkeypatch.setattr(VectorIndex, "rebuild", real_rebuild)
        collection.upsert(docs(1), vectors[:1])
        collection.commit()
        assert collection.index.factory == "HNSW32" and len(collection.index) == 60


def test_lossy_index_scores_are_exact(tmp_path):
    """A collection searches a PQ index with an exact re-score from its SQLite vectors: scores are true inner products."""
    vectors = unit_vectors(600)
    with create(tmp_path / "c", "IVF4,PQ4") as collection:
        collection.upsert(docs(600), vectors)
        assert collection.index.is_trained and collection.index.is_lossy
        hits = collection.search(vectors[:5], 10)
        for query, row in zip(vectors[:5], hits):
            assert row[0][0] == f"d{int(np.argmax(vectors @ query))}"
            for doc_id, score in row:
                assert abs(score - float(vectors[int(doc_id[1:])] @ query)) < 1e-5


def test_a_manifest_left_behind_by_a_crash_is_rewritten_by_the_next_write(tmp_path):
    """A kill between the index's save and the manifest's leaves the manifest's counts stale while SQLite and the
    index agree; the next write (even one that changes nothing, as a re-run delete) rewrites it, so `check` is clean."""
    from twostage.indexes.check import check_collection

    path = tmp_path / "c"
    with create(path) as collection:
        collection.upsert(docs(20), unit_vectors(20))
        collection.commit()
    before = (path / "manifest.json").read_text()
    with Collection.open(path) as collection:
        collection.delete([f"d{i}" for i in range(10)])
        collection.commit()
    (path / "manifest.json").write_text(before)  # the crash: vectors.faiss saved, manifest.json not
    assert check_collection(path).problems
    with Collection.open(path) as collection:
        assert collection.delete(["d0"]).missing == ["d0"]  # the re-run finds nothing left to delete
        collection.commit()
    report = check_collection(path)
    assert report.problems == [] and report.documents == 10
