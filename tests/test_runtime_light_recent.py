"""A query runs through the exported model once per search: the first stage's pooled vector and MaxSim's query tokens
share one forward pass (``runtime.light.RecentOutputs``), with the scores a second pass would give."""

from __future__ import annotations

import numpy as np
import pytest

from twostage.reranker import Candidate, MaxSimReranker
from twostage.runtime.light import RECENT_TOKENS, RecentOutputs, TokenOutput

QUERIES = ["How many people live in Berlin?", "bread starter"]
TEXTS = [
    "Berlin has about 3.7 million inhabitants.",
    "The Louvre is an art museum in Paris.",
    "Sourdough bread needs a fermented starter.",
]


def output(tokens: int, dim: int = 4) -> TokenOutput:
    return TokenOutput(np.ones((tokens, dim), dtype=np.float32), np.arange(tokens, dtype=np.int64))


def test_recent_outputs_are_read_only_and_the_least_recently_used_go_first_past_the_byte_bound():
    one = output(2).token_embeddings.nbytes + output(2).input_ids.nbytes
    recent = RecentOutputs(max_bytes=2 * one)
    recent.put("a", output(2))
    recent.put("b", output(2))
    kept = recent.get("a")  # now the most recently used
    assert kept is not None and not kept.token_embeddings.flags.writeable and not kept.input_ids.flags.writeable
    with pytest.raises(ValueError):
        kept.token_embeddings[0, 0] = 2.0  # shared with later callers: never changed in place
    recent.put("c", output(2))  # over the bound: "b", the least recently used, goes
    assert recent.get("b") is None and recent.get("a") is not None and recent.get("c") is not None
    recent.put("c", output(2))  # the same key again replaces, not adds
    assert recent.get("a") is not None
    recent.clear()
    assert recent.get("a") is None and recent.get("c") is None
    off = RecentOutputs(max_bytes=0)  # keeps nothing
    off.put("a", output(2))
    assert off.get("a") is None


class CountingRuntime:
    """Wraps a runtime and counts its forward passes."""

    def __init__(self, runtime):
        self.runtime, self.calls = runtime, 0

    def __call__(self, feed):
        self.calls += 1
        return self.runtime(feed)

    def __getattr__(self, name):
        return getattr(self.runtime, name)


@pytest.fixture(scope="module")
def exported(minilm_path):
    from twostage.retriever.biencoder import BiEncoder

    BiEncoder(str(minilm_path), backend="openvino", cache=None).encode_documents(["x"])  # the export, once
    return minilm_path


def fresh_encoder(path, keep: bool = True):
    from twostage.retriever.biencoder import BiEncoder

    encoder = BiEncoder(str(path), backend="openvino", cache=None)
    assert encoder.light is not None
    encoder.light.runtime = CountingRuntime(encoder.light.runtime)
    if not keep:
        encoder.light.recent = RecentOutputs(max_bytes=0)
    return encoder


def test_the_first_stage_and_maxsim_share_one_forward_pass_per_query_with_equal_scores(exported):
    encoder = fresh_encoder(exported)
    reranker = MaxSimReranker(encoder, token_store=None)
    candidates = [Candidate(f"d{i}", t) for i, t in enumerate(TEXTS)]
    vectors = encoder.encode_queries(QUERIES)
    assert encoder.light.runtime.calls == 1  # both queries in one batch
    passes = encoder.light.runtime.calls
    scores = reranker.score_candidates(QUERIES, [candidates, candidates])
    # the passages (never kept: only what asks to be remembered is) ran; the queries did not run again
    assert encoder.light.runtime.calls == passes + 1
    assert encoder.light.recent.get(TEXTS[0]) is None

    again = fresh_encoder(exported, keep=False)
    expected = MaxSimReranker(again, token_store=None).score_candidates(QUERIES, [candidates, candidates])
    np.testing.assert_allclose(again.encode_queries(QUERIES), vectors, rtol=1e-6, atol=1e-6)
    for got, want in zip(scores, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert again.light.runtime.calls == 3  # without the memory: the passages, the queries twice


def test_long_texts_are_not_kept_and_a_new_length_limit_forgets_what_was(exported):
    encoder = fresh_encoder(exported)
    long_query = " ".join(["berlin"] * (RECENT_TOKENS + 5))
    encoder.encode_queries([long_query, QUERIES[0]])
    assert encoder.light.recent.get(long_query) is None and encoder.light.recent.get(QUERIES[0]) is not None
    encoder.max_seq_length = 32  # outputs of another cut: what was kept is dropped
    assert encoder.light.recent.get(QUERIES[0]) is None


def test_threads_searching_at_once_get_each_their_own_query_outputs(exported):
    """A server searches from several threads: each query's remembered outputs are its own, equal to a lone pass."""
    from concurrent.futures import ThreadPoolExecutor

    encoder = fresh_encoder(exported)
    reranker = MaxSimReranker(encoder, token_store=None)
    queries = [f"{word} population of the city" for word in ("berlin", "paris", "tokyo", "rome", "oslo", "lima")]
    candidates = [Candidate(f"d{i}", t) for i, t in enumerate(TEXTS)]

    def search(query: str) -> tuple[np.ndarray, np.ndarray]:
        vector = encoder.encode_queries([query])[0]
        return vector, reranker.score_candidates([query], [candidates])[0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(search, queries * 3))
    alone = fresh_encoder(exported, keep=False)
    lone = MaxSimReranker(alone, token_store=None)
    for query, (vector, scores) in zip(queries * 3, together):
        np.testing.assert_allclose(vector, alone.encode_queries([query])[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(scores, lone.score_candidates([query], [candidates])[0], rtol=1e-6)
