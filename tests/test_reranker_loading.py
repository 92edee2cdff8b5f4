"""Loading rerankers offline: fast, one-line RerankerLoadErrors, and the MaxSim fallback for the implicit default only."""

from __future__ import annotations

import shutil
import socket
import time

import pytest
from sentence_transformers import SentenceTransformer

import twostage.runtime.models
from twostage.reranker import (
    DEFAULT_RERANKER,
    CrossEncoderReranker,
    MaxSimReranker,
    RerankerLoadError,
    load_reranker,
)
from twostage.runtime.hub import hub_reachable


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Offline, with an empty Hugging Face cache, whatever the machine's environment holds."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def encoder(tiny_bi_encoder_dir):
    return SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu")


def assert_says_what_to_do(error: RerankerLoadError) -> None:
    """Python callers are told what to pass in Python's words; the CLI's message names its flags."""
    message, cli = str(error), error.cli_message()
    assert "\n" not in message and message.startswith("reranker: ") and "--" not in message
    assert "reranker=PATH" in message and "reranker='maxsim'" in message and "reranker=None" in message
    assert "--reranker PATH" in cli and "--reranker maxsim" in cli and "--no-rerank" in cli


def test_default_by_name_offline_fails_fast_with_advice():
    start = time.perf_counter()
    with pytest.raises(RerankerLoadError) as info:
        CrossEncoderReranker()
    assert time.perf_counter() - start < 3
    assert_says_what_to_do(info.value)
    assert DEFAULT_RERANKER in str(info.value) and "offline" in str(info.value)
    assert info.value.reason == "not available offline"


def test_unreachable_hub_without_offline_env_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(twostage.runtime.models, "hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(RerankerLoadError, match="hub is unreachable") as info:
        CrossEncoderReranker("some-org/some-reranker")
    assert time.perf_counter() - start < 3
    assert_says_what_to_do(info.value)


def test_hub_check_is_bounded_even_when_connect_hangs(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def hang(*args, **kwargs):
        time.sleep(1.5)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    assert hub_reachable(timeout=0.2) is False
    assert time.perf_counter() - start < 1
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub_reachable() is False  # offline mode: no connection attempted at all


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(RerankerLoadError, match="no config.json") as info:
        CrossEncoderReranker(str(tmp_path))
    assert_says_what_to_do(info.value)


def test_directory_with_a_broken_model(tmp_path, tiny_cross_encoder_dir):
    broken = shutil.copytree(tiny_cross_encoder_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RerankerLoadError, match="not a valid cross-encoder directory") as info:
        CrossEncoderReranker(str(broken))
    assert_says_what_to_do(info.value)


def test_bi_encoder_directory_is_not_a_cross_encoder(tiny_bi_encoder_dir):
    with pytest.raises(RerankerLoadError, match="not a cross-encoder .saved as BertModel") as info:
        CrossEncoderReranker(str(tiny_bi_encoder_dir))
    assert_says_what_to_do(info.value)


def test_missing_paths(tmp_path):
    for spec in (str(tmp_path / "nope"), "./nope/either", "~/no/such/reranker"):
        with pytest.raises(RerankerLoadError, match="no such directory"):
            CrossEncoderReranker(spec)
    with pytest.raises(RerankerLoadError, match="is a file"):
        CrossEncoderReranker(__file__)


def test_model_in_the_local_hf_cache_loads_without_network(tmp_path, tiny_cross_encoder_dir):
    import huggingface_hub.constants

    repo = tmp_path / "hf-cache" / "models--some-org--tiny-reranker"
    shutil.copytree(tiny_cross_encoder_dir, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    assert huggingface_hub.constants.HF_HUB_CACHE == str(tmp_path / "hf-cache")
    from_cache = CrossEncoderReranker("some-org/tiny-reranker")
    from_dir = CrossEncoderReranker(str(tiny_cross_encoder_dir))
    texts = ["berlin has a population of 3 million", "paris museum"]
    assert from_cache.score("berlin people", texts).tolist() == from_dir.score("berlin people", texts).tolist()


def test_load_reranker_specs(tiny_cross_encoder_dir, tiny_bi_encoder_dir, encoder):
    assert load_reranker(None, explicit=False) == (None, None)
    assert load_reranker("none", explicit=True) == (None, None)
    maxsim, notice = load_reranker("maxsim", encoder=encoder, explicit=True)
    assert isinstance(maxsim, MaxSimReranker) and notice is None
    cross, notice = load_reranker(str(tiny_cross_encoder_dir), explicit=True, batch_size=8)
    assert isinstance(cross, CrossEncoderReranker) and cross.batch_size == 8 and notice is None
    alone, notice = load_reranker("maxsim", explicit=True)  # no collection: over the default bi-encoder
    assert isinstance(alone, MaxSimReranker) and notice is None
    named, _ = load_reranker(f"maxsim:{tiny_bi_encoder_dir}")
    assert named.score("berlin people", ["berlin", "paris"]).shape == (2,)
    with pytest.raises(RerankerLoadError, match="maxsim: bi-encoder model directory"):
        load_reranker("maxsim:/no/such/model")


def test_implicit_default_falls_back_to_maxsim_with_a_notice(encoder):
    start = time.perf_counter()
    fallback, notice = load_reranker(DEFAULT_RERANKER, encoder=encoder, explicit=False)
    assert time.perf_counter() - start < 3
    assert isinstance(fallback, MaxSimReranker)
    assert notice == (  # in no interface's words: the CLI adds its flag advice, the Python API warns
        f"reranker: {DEFAULT_RERANKER} is not available offline; using late-interaction MaxSim over the "
        "bi-encoder instead"
    )


def test_explicit_or_non_default_spec_raises(encoder, tmp_path):
    with pytest.raises(RerankerLoadError) as info:
        load_reranker(DEFAULT_RERANKER, encoder=encoder, explicit=True)
    assert_says_what_to_do(info.value)
    with pytest.raises(RerankerLoadError):
        load_reranker(str(tmp_path / "missing"), encoder=encoder, explicit=False)
    fallback, notice = load_reranker(DEFAULT_RERANKER, encoder=None, explicit=False)  # no collection: MiniLM
    assert isinstance(fallback, MaxSimReranker) and "MaxSim" in notice


def test_spec_strings_name_a_kind_and_its_argument():
    from twostage.reranker.loading import parse_spec

    assert parse_spec("none") == ("none", "")
    assert parse_spec(" MaxSim ") == ("maxsim", "")
    assert parse_spec("cross-encoder:some-org/model") == ("cross-encoder", "some-org/model")
    assert parse_spec("cross-encoder:/models/ce") == ("cross-encoder", "/models/ce")
    assert parse_spec("some-org/model") == ("cross-encoder", "some-org/model")  # a bare name is a cross-encoder
    assert parse_spec(DEFAULT_RERANKER) == ("cross-encoder", DEFAULT_RERANKER)
    assert parse_spec("default") == ("cross-encoder", DEFAULT_RERANKER)


def test_registry_loads_each_kind(tiny_cross_encoder_dir, encoder):
    prefixed, notice = load_reranker(f"cross-encoder:{tiny_cross_encoder_dir}", explicit=True, batch_size=4)
    bare, _ = load_reranker(str(tiny_cross_encoder_dir), explicit=True)
    assert isinstance(prefixed, CrossEncoderReranker) and prefixed.batch_size == 4 and notice is None
    texts = ["berlin has a population of 3 million", "paris museum"]
    assert prefixed.score("berlin people", texts).tolist() == bare.score("berlin people", texts).tolist()
    with pytest.raises(RerankerLoadError, match="takes no argument"):
        load_reranker("none:extra", encoder=encoder)
    with pytest.raises(RerankerLoadError, match="empty cross-encoder name"):
        load_reranker("cross-encoder:")


def test_a_registered_kind_is_reachable_by_its_spec(encoder, monkeypatch):
    from twostage.reranker import loading

    monkeypatch.setitem(loading._KINDS, "echo", lambda arg, context: ("echo", arg, context.batch_size))
    assert load_reranker("echo:hello", batch_size=3) == (("echo", "hello", 3), None)
    assert "echo" in loading.reranker_kinds()


def test_only_the_implicit_default_falls_back(encoder):
    from twostage.reranker.loading import is_implicit_default

    assert is_implicit_default("default") and is_implicit_default(DEFAULT_RERANKER)
    assert not is_implicit_default(f"cross-encoder:{DEFAULT_RERANKER}") and not is_implicit_default("maxsim")
    fallback, notice = load_reranker("default", encoder=encoder)  # explicit=None: the rule decides
    assert isinstance(fallback, MaxSimReranker) and "using late-interaction MaxSim" in notice
    with pytest.raises(RerankerLoadError):
        load_reranker(f"cross-encoder:{DEFAULT_RERANKER}", encoder=encoder)  # named by the user: no fallback


def test_maxsim_by_bi_encoder_name_needs_no_collection(tiny_bi_encoder_dir):
    by_path = MaxSimReranker(str(tiny_bi_encoder_dir))
    by_model = MaxSimReranker(SentenceTransformer(str(tiny_bi_encoder_dir), device="cpu"))
    texts = ["berlin has a population of 3 million", "paris museum"]
    assert by_path.score("berlin people", texts).tolist() == by_model.score("berlin people", texts).tolist()
    assert [row["corpus_id"] for row in by_path.rank("berlin people", texts)] in ([0, 1], [1, 0])


def test_the_command_line_advises_in_its_flags(tiny_bi_encoder_dir, tmp_path, capsys):
    """The same error through ``twostage search`` names the flags to pass, one line, exit status 2."""
    from twostage import Engine
    from twostage.cli import main

    with Engine.create(tmp_path / "index", model=str(tiny_bi_encoder_dir), reranker=None) as engine:
        engine.add(["berlin has 3 million people", "paris museum"])
    missing = tmp_path / "no-such-cross-encoder"
    assert main(["search", str(tmp_path / "index"), "berlin", "--reranker", str(missing)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the load progress bars
    assert len(errors) == 1 and "--reranker PATH" in errors[0] and "reranker=None" not in errors[0]
