"""The device encode path (runtime.device_encode) on the CPU: the same code a GPU runs, minus asynchronous copies.

Parallel tokenisation equals serial (and the library's), batches follow the memory budget, out-of-memory errors are
survived by halving, the writer thread keeps chunks in order and stops after a failure, device errors are one line,
and vectors from the bf16 path search a collection built by the fp32 path (and vice versa)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import EXAMPLES

from twostage.runtime import device_encode
from twostage.runtime.device_encode import (
    DeviceMemoryError,
    DeviceOptions,
    DeviceRunner,
    autocast_dtype,
    buckets,
    bytes_per_token,
    pad,
)
from twostage.runtime.tokenize_pool import Tokenized, TokenizerPool

TEXTS = [json.loads(line)["text"] for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()][:40]
LONG = [" ".join(TEXTS[i : i + 8]) for i in range(0, 40, 8)]  # past a 64-token limit


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


# ------------------------------------------------------------------ tokenisation
def _rows(tokens: Tokenized, field: str = "ids") -> list[list[int]]:
    array = getattr(tokens, field)
    return [array[s : s + n].tolist() for s, n in zip(tokens.starts, tokens.lengths)]


def test_parallel_tokenisation_equals_serial_and_the_library(tokenizer):
    texts = TEXTS + LONG
    pairs = [(f"query {i}", text) for i, text in enumerate(texts)]
    serial = TokenizerPool(tokenizer, limit=64, workers=0)
    pool = TokenizerPool(tokenizer, limit=64, workers=2, piece=7)
    try:
        for inputs in (texts, pairs):
            one, many = serial.tokenize(inputs), pool.tokenize(inputs)
            for field in ("ids", "type_ids", "lengths", "cut"):
                assert np.array_equal(getattr(one, field), getattr(many, field)), field
        # groups come back whole and in order, an empty one included, while later pieces are being tokenised
        groups = list(pool.stream([texts[:10], [], texts[10:]]))
        assert [len(g) for g in groups] == [10, 0, len(texts) - 10]
        assert _rows(Tokenized.concat(groups)) == _rows(serial.tokenize(texts))
    finally:
        pool.close()
    single = serial.tokenize(texts)
    assert _rows(single) == [list(r) for r in tokenizer(texts, truncation=True, max_length=64)["input_ids"]]
    assert single.cut.tolist() == [len(r) > 64 for r in tokenizer(texts)["input_ids"]]
    both = serial.tokenize(pairs)
    library = tokenizer([q for q, _ in pairs], [t for _, t in pairs], truncation=True, max_length=64)
    assert _rows(both) == [list(r) for r in library["input_ids"]]
    assert _rows(both, "type_ids") == [list(r) for r in library["token_type_ids"]]
    assert single.cut.sum() == len(LONG)


# ------------------------------------------------------------------ batching
def test_buckets_are_longest_first_within_budget_and_cover_every_row():
    lengths = np.random.default_rng(0).integers(1, 200, size=500)
    batches = buckets(lengths, budget=2000, max_batch=16)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(500))
    widths = [int(lengths[b].max()) for b in batches]
    assert widths == sorted(widths, reverse=True)
    for batch in batches:
        assert len(batch) <= 16 and (len(batch) * lengths[batch].max() <= 2000 or len(batch) == 1)
    assert [len(b) for b in buckets(np.array([500, 3, 3]), budget=100, max_batch=99)] == [1, 2]  # too long: alone


def test_pad_builds_the_library_batch(tokenizer):
    texts = TEXTS[:5]
    tokens = TokenizerPool(tokenizer, limit=64, workers=0).tokenize(texts)
    rows = np.array([3, 0, 4])
    batch = pad(tokens, rows, tokenizer.pad_token_id, types=True)
    expected = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=64, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(batch[key], expected[key]), key
    left = pad(tokens, rows, 0, types=False, left=True)
    assert np.array_equal(left["attention_mask"][:, ::-1].sum(1), tokens.lengths[rows])
    assert left["input_ids"][0, -1] == tokens.ids[tokens.starts[3] + tokens.lengths[3] - 1]


CONFIG = type("Config", (), {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2})()


def _tokens(lengths: list[int]) -> Tokenized:
    """Rows whose ids are 1..n, so a row's sum identifies it."""
    ids = np.concatenate([np.arange(1, n + 1) for n in lengths]).astype(np.int32)
    return Tokenized(ids, np.zeros_like(ids), np.array(lengths, dtype=np.int64), np.zeros(len(lengths), dtype=bool))


def _sum_forward(limit: int | None = None, seen: list | None = None):
    def forward(batch):
        ids = batch["input_ids"]
        if seen is not None:
            seen.append(tuple(ids.shape))
        if limit is not None and ids.numel() > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return (ids * batch["attention_mask"]).sum(1, keepdim=True).float()

    return forward


def test_batches_are_sized_from_the_memory_limit_and_free_memory(monkeypatch):
    per_token = bytes_per_token(CONFIG, 50, None)
    runner = DeviceRunner("cpu", DeviceOptions(memory_limit=per_token * 200, max_batch=1000), CONFIG)
    assert runner.budget(50) == 200 and runner.precision == "fp32"
    seen: list = []
    out = np.zeros((30, 1), dtype=np.float32)
    runner.run(_tokens([50] * 30), _sum_forward(seen=seen), out, pad_id=0, types=False)
    assert seen == [(4, 50)] * 7 + [(2, 50)]  # 200 tokens a batch: 4 rows of 50
    assert np.all(out[:, 0] == 50 * 51 / 2)
    # no limit given: the measured free memory (here a fake one) decides, half of it used
    monkeypatch.setattr(device_encode, "free_memory", lambda device: 2 * per_token * 1000)
    assert DeviceRunner("cpu", DeviceOptions(), CONFIG).budget(50) == 1000


def test_out_of_memory_halves_the_batch_instead_of_crashing():
    lengths = [10, 40, 25, 40, 5, 33, 12, 40] * 8
    tokens = _tokens(lengths)
    runner = DeviceRunner("cpu", DeviceOptions(memory_limit=1 << 40, max_batch=64), CONFIG)
    seen: list = []
    out = np.zeros((len(lengths), 1), dtype=np.float32)
    runner.run(tokens, _sum_forward(limit=300, seen=seen), out, pad_id=0, types=False)
    assert out[:, 0].tolist() == [n * (n + 1) / 2 for n in lengths]  # every row, in input order
    assert runner.backoffs >= 1 and runner.cap is not None and runner.cap <= 300
    assert seen[0] == (64, 40)  # the first try was one batch; it failed and was halved until it fit
    backoffs, out2 = runner.backoffs, np.zeros_like(out)
    runner.run(tokens, _sum_forward(limit=300), out2, pad_id=0, types=False)
    assert runner.backoffs == backoffs and np.array_equal(out, out2)  # the lower budget is kept

    with pytest.raises(DeviceMemoryError, match="one input of 40 tokens does not fit"):
        runner.run(_tokens([40]), _sum_forward(limit=10), out[:1], pad_id=0, types=False)

    def broken(batch):
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):  # other errors are not retried
        runner.run(_tokens([3, 4]), broken, out[:2], pad_id=0, types=False)


def test_precision_per_device(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda, "auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, "auto") is torch.float16  # fp16 where bf16 is absent
    assert autocast_dtype(torch.device("cpu"), "auto") is None  # fp32 on the CPU unless asked
    assert autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        DeviceOptions(precision="fp8")


# ------------------------------------------------------------------ the stages on the device path
def test_bi_encoder_device_path_equals_sentence_transformers(tiny_bi_encoder_dir):
    from twostage.retriever.biencoder import BiEncoder

    reference = BiEncoder(str(tiny_bi_encoder_dir), cache=None)
    options = DeviceOptions(workers=2, piece=9, window=25, memory_limit=bytes_per_token(CONFIG, 64, None) * 300)
    device = BiEncoder(str(tiny_bi_encoder_dir), cache=None, device_options=options)
    try:
        for encoder in (reference, device):
            encoder.max_seq_length = 64
        texts = TEXTS + LONG
        expected, got = reference.encode_documents(texts), device.encode_documents(texts)
        assert np.allclose(expected.embeddings, got.embeddings, atol=1e-5)
        assert got.truncated == expected.truncated == len(LONG)
        assert device.device_encoder.runner.batches > 3  # the memory limit cut it into several batches
        assert device.backend_tag == "torch/fp32" and device.cache_key == reference.cache_key
    finally:
        device.device_encoder.close()


def test_cross_encoder_scores_a_whole_depth_as_one_batch(tiny_cross_encoder_dir):
    from twostage.reranker.cross_encoder import CrossEncoderReranker

    reference = CrossEncoderReranker(str(tiny_cross_encoder_dir))
    device = CrossEncoderReranker(str(tiny_cross_encoder_dir), device_options=DeviceOptions(workers=0))
    passages = TEXTS + LONG
    expected = reference.score("how many people live in berlin", passages)
    got = device.score("how many people live in berlin", passages)
    assert np.allclose(expected, got, atol=1e-5)
    assert device.device_scorer.runner.batches == 1 and device.truncated == reference.truncated
    assert np.allclose(
        device.score_batch(["a", "b"], [passages[:3], passages[3:5]])[1], reference.score("b", passages[3:5]), atol=1e-5
    )


def test_maxsim_scores_match_on_the_cpu_path():
    from twostage.reranker.maxsim import _maxsim

    rng = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(5, 8, generator=rng), dim=-1)
    passages = [torch.nn.functional.normalize(torch.randn(n, 8, generator=rng), dim=-1) for n in (3, 9, 1, 4)]
    expected = [float((p @ query.T).max(dim=0).values.sum()) for p in passages]
    assert np.allclose(_maxsim(query, passages), expected, atol=1e-6)


# ------------------------------------------------------------------ across devices
def test_bf16_vectors_search_an_fp32_collection_and_back(tmp_path, minilm, minilm_path):
    from twostage import Engine
    from twostage.retriever.biencoder import BiEncoder
    from twostage.retriever.cache import EmbeddingCache

    # the cache (keyed apart from fp32, below) spares the engine a second bf16 encoding of the same passages
    bf16 = BiEncoder(
        str(minilm_path),
        cache=EmbeddingCache(tmp_path / "cache.sqlite"),
        device_options=DeviceOptions(precision="bf16", workers=0),
    )
    assert bf16.backend_tag == "torch/bf16" and bf16.cache_key != minilm.cache_key  # cached apart from fp32
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS[:20])]
    queries = ["How many people live in Berlin?", "museums in Paris", "violin makers"]
    low = bf16.encode_documents([d["text"] for d in docs]).embeddings
    full = minilm.encode_documents([d["text"] for d in docs]).embeddings
    assert np.min(np.sum(low * full, axis=1)) > 0.999 and np.abs(low - full).max() < 0.01
    top = {}
    for name, builder, searcher in (("gpu-built", bf16, minilm), ("cpu-built", minilm, bf16)):
        with Engine.create(tmp_path / name, encoder=builder, reranker=None, index_type="flat") as engine:
            engine.add(docs)
        with Engine.open(tmp_path / name, encoder=searcher, reranker=None) as engine:
            top[name] = [[h.doc_id for h in r.hits[:3]] for r in engine.search_many(queries, k=10, top_n=3)]
    assert top["gpu-built"] == top["cpu-built"]


# ------------------------------------------------------------------ the write pipeline
def test_writer_runs_steps_in_order_and_nothing_after_a_failure():
    from twostage.writer import OrderedWriter

    done: list[int] = []

    def step(i):
        def run():
            if i == 3:
                raise OSError("disk full")
            done.append(i)

        return run

    with pytest.raises(OSError, match="disk full"):
        with OrderedWriter() as write:
            for i in range(6):
                write(step(i))
    assert done == [0, 1, 2]

    done.clear()
    with pytest.raises(KeyError):  # the caller fails: what it submitted is still written, in order
        with OrderedWriter(depth=3) as write:
            for i in (0, 1, 2):
                write(step(i))
            raise KeyError("bad input")
    assert done == [0, 1, 2]


def test_engine_add_commits_each_chunk_before_the_next(tmp_path, tiny_bi_encoder_dir, monkeypatch):
    from twostage import Engine
    from twostage.indexes.collection import Collection
    from twostage.ingest import writes as engine_module  # Engine.add's chunked writes live in twostage.ingest
    from twostage.retriever.biencoder import BiEncoder

    monkeypatch.setattr(engine_module, "ADD_CHUNK", 4)
    monkeypatch.setattr(engine_module, "DEVICE_ADD_CHUNK", 4)
    encoder = BiEncoder(str(tiny_bi_encoder_dir), cache=None, device_options=DeviceOptions(workers=0))
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS[:14])]
    original, calls = Collection.upsert, []

    def failing(self, docs, *args, **kwargs):
        calls.append([d.id for d in docs])
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, docs, *args, **kwargs)

    monkeypatch.setattr(Collection, "upsert", failing)
    engine = Engine.create(tmp_path / "c", encoder=encoder, reranker=None, index_type="flat")
    with pytest.raises(OSError, match="disk full"):
        engine.add(docs)
    engine.close()
    assert calls == [[f"d{i}" for i in range(j, j + 4)] for j in (0, 4, 8)]  # chunks in order, none after the failure
    monkeypatch.setattr(Collection, "upsert", original)
    with Engine.open(tmp_path / "c", encoder=encoder, reranker=None) as engine:
        assert len(engine.collection) == 8  # the two chunks before the failure, committed
        report = engine.add(docs)  # running it again finishes the job without duplicates
        assert (report.added, report.unchanged) == (6, 8) and len(engine.collection) == 14
        stored = engine.collection.embeddings_of(["d13"])
    expected = BiEncoder(str(tiny_bi_encoder_dir), cache=None).encode_documents([TEXTS[13]]).embeddings
    assert np.allclose(stored, expected, atol=1e-5)
    encoder.device_encoder.close()


# ------------------------------------------------------------------ device errors
def test_device_errors_are_one_line(monkeypatch):
    from twostage.runtime import config
    from twostage.runtime.config import RuntimeConfig, RuntimeConfigError, resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeConfigError, match="torch sees no CUDA device"):
            resolve_device("cuda:0")
        assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU, as torch sees it
    monkeypatch.setattr(config, "_may_have_gpu", lambda: True, raising=False)
    assert resolve_device("auto") == "cuda"
    assert RuntimeConfig(device="cuda").placement() == ("cuda", "torch")  # on CUDA the backend is torch
    for backend in ("openvino", "onnx-int8"):
        with pytest.raises(RuntimeConfigError, match="runs on the CPU only") as error:
            RuntimeConfig(device="cuda", backend=backend).placement()
        assert "\n" not in str(error.value)
    assert RuntimeConfig(device="auto", backend="openvino").placement()[0] == "cpu"
    with pytest.raises(RuntimeConfigError, match="unknown device"):
        RuntimeConfig(device="gpu")
