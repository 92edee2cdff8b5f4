"""Model resolution decides fast offline; fingerprints follow model content, not location."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from retriever_fixtures import packaged_minilm, set_offline

from twostage.runtime.models import DEFAULT_BI_ENCODER, ModelLoadError, hub_reachable, model_fingerprint, resolve_model


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    set_offline(monkeypatch)
    # An empty private Hub cache, so results do not depend on what this machine has downloaded.
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "empty-hf-cache"))


def fake_hf_cache(root: Path, repo_id: str, files: dict[str, str]) -> Path:
    """Lay out a Hugging Face hub cache entry (refs/main -> snapshots/<commit>) holding ``files``."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def test_default_resolves_to_packaged_copy_fast_when_offline() -> None:
    start = time.perf_counter()
    resolved = resolve_model(DEFAULT_BI_ENCODER)
    assert time.perf_counter() - start < 3
    assert resolved.origin == "packaged"
    assert resolved.name == DEFAULT_BI_ENCODER
    assert Path(resolved.source, "modules.json").is_file()


def test_short_default_name_is_normalised() -> None:
    resolved = resolve_model("all-MiniLM-L6-v2")
    assert resolved.name == DEFAULT_BI_ENCODER
    assert resolved.origin == "packaged"


def test_unreachable_endpoint_without_offline_flag_is_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    assert hub_reachable() is False
    resolved = resolve_model(DEFAULT_BI_ENCODER)
    assert time.perf_counter() - start < 3
    assert resolved.origin == "packaged"
    with pytest.raises(ModelLoadError, match="unreachable"):
        resolve_model("twostage-tests/no-such-model")


def test_offline_flag_short_circuits_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert hub_reachable() is False


def test_unknown_hub_id_offline_raises_quickly_naming_it() -> None:
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        resolve_model("twostage-tests/no-such-model")
    assert time.perf_counter() - start < 3
    message = str(err.value)
    assert "'twostage-tests/no-such-model'" in message
    assert "offline" in message and "local directory" in message
    assert "\n" not in message


def test_missing_local_path_raises() -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("./no/such/model-dir")


def test_local_directory_used_as_is(tmp_path: Path) -> None:
    resolved = resolve_model(tmp_path)
    assert resolved.origin == "local-dir"
    assert resolved.source == str(tmp_path)


def test_hf_cache_is_preferred_and_short_form_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-cache"
    snapshot = fake_hf_cache(cache, DEFAULT_BI_ENCODER, {"config.json": "{}", "modules.json": "[]"})
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(cache))
    for name in (DEFAULT_BI_ENCODER, "all-MiniLM-L6-v2"):
        resolved = resolve_model(name)
        assert (resolved.origin, resolved.name, Path(resolved.source)) == ("hf-cache", DEFAULT_BI_ENCODER, snapshot)


def test_cross_encoder_short_form_uses_its_organisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-cache"
    fake_hf_cache(cache, "cross-encoder/ms-marco-MiniLM-L6-v2", {"config.json": "{}"})
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(cache))
    assert resolve_model("ms-marco-MiniLM-L6-v2", kind="cross-encoder").origin == "hf-cache"
    with pytest.raises(ModelLoadError, match="bi-encoder model"):
        resolve_model("ms-marco-MiniLM-L6-v2", kind="bi-encoder")  # only the default bi-encoder is packaged


@pytest.fixture(scope="module")
def minilm_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full copy of the packaged model in another directory."""
    return Path(shutil.copytree(packaged_minilm(), tmp_path_factory.mktemp("copy") / "minilm"))


def test_fingerprint_same_for_copy_elsewhere(minilm_copy: Path) -> None:
    original = model_fingerprint(packaged_minilm())
    assert len(original) == 64 and int(original, 16) >= 0
    assert model_fingerprint(minilm_copy) == original
    assert model_fingerprint(str(minilm_copy)) == original


def light_clone(source: Path, target: Path) -> Path:
    """Copy a model directory, symlinking the big weight file instead of copying it."""

    def copy(src: str, dst: str) -> None:
        if src.endswith(".safetensors"):
            Path(dst).symlink_to(src)
        else:
            shutil.copy2(src, dst)

    return Path(shutil.copytree(source, target, copy_function=copy))


def test_fingerprint_ignores_docs_and_versions(minilm_copy: Path, tmp_path: Path) -> None:
    copy = light_clone(minilm_copy, tmp_path / "m")
    (copy / "README.md").write_text("rewritten model card")
    config = json.loads((copy / "config.json").read_text())
    config["transformers_version"] = "99.0.0"
    (copy / "config.json").write_text(json.dumps(config, indent=4))
    assert model_fingerprint(copy) == model_fingerprint(packaged_minilm())


@pytest.mark.parametrize(
    "relative, change",
    [
        ("1_Pooling/config.json", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}),
        ("sentence_bert_config.json", {"max_seq_length": 128}),
    ],
)
def test_fingerprint_changes_with_tiny_config_change(
    minilm_copy: Path, tmp_path: Path, relative: str, change: dict
) -> None:
    copy = light_clone(minilm_copy, tmp_path / "m")
    config_path = copy / relative
    config = json.loads(config_path.read_text())
    config.update(change)
    config_path.write_text(json.dumps(config))
    assert model_fingerprint(copy) != model_fingerprint(packaged_minilm())


def test_fingerprint_cache_notices_edits(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    before = model_fingerprint(tmp_path)
    assert model_fingerprint(tmp_path) == before
    (tmp_path / "config.json").write_text('{"hidden_size": 16}')
    assert model_fingerprint(tmp_path) != before


def test_fingerprint_of_missing_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        model_fingerprint(tmp_path / "absent")
