"""Load a sentence-transformers ``CrossEncoder`` from where the runtime's resolver finds it (local directory, local HF
cache, the hub only when reachable), and refuse what is not a single-score cross-encoder.

Every failure becomes one ``RerankerLoadError`` line saying what failed and what to pass instead, never a traceback,
and an offline machine gets its answer in about two seconds instead of minutes of download retries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

from twostage.runtime.hub import hub_unavailable_reason
from twostage.runtime.models import ModelLoadError, ResolvedModel, resolve_model

from .base import RerankerLoadError

DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L6-v2"
NOT_LOCAL = "not found locally (no such directory, not in the Hugging Face cache)"
#: the ``RerankerLoadError.reason`` when the model would have to be downloaded and cannot be
OFFLINE = "not available offline"


def locate_cross_encoder(name_or_path: str) -> ResolvedModel:
    """Where ``name_or_path`` would load from, or ``RerankerLoadError``: decided
    without importing torch, so an offline default falls back at once. A local directory must look like a
    cross-encoder."""
    spec = str(name_or_path)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            _fail(spec, "it is a file, not a cross-encoder directory", "not a directory")
        if not (path / "config.json").is_file():
            _fail(spec, "not a cross-encoder directory (no config.json)", "not a model directory")
        _check_architectures(spec, _saved_architectures(path / "config.json"))
    elif _looks_like_path(spec):
        _fail(spec, "no such directory", "no such directory")
    try:
        return resolve_model(spec, kind="cross-encoder")
    except ModelLoadError:
        _fail(spec, f"{NOT_LOCAL} and the Hugging Face hub is {hub_unavailable_reason()}", OFFLINE)


def load_cross_encoder(name_or_path: str, *, device: str = "cpu", max_length: int | None = None) -> Any:
    """Load ``name_or_path`` as a single-score ``CrossEncoder`` (from :func:`locate_cross_encoder`'s answer: a
    directory, the local HF cache, or the hub only when reachable) or raise ``RerankerLoadError``."""
    spec = str(name_or_path)
    resolved = locate_cross_encoder(spec)
    model = _try_load(resolved.source, device, max_length, local_files_only=resolved.origin != "hub")
    if isinstance(model, Exception):
        reason = {
            "local-dir": "not a valid cross-encoder directory",
            "hf-cache": "its copy in the local Hugging Face cache cannot be loaded",
        }.get(resolved.origin, "download from the Hugging Face hub failed")
        reason = f"{reason} ({_one_line(model)})"
        _fail(spec, reason, reason)
    return _checked(spec, model)


def _try_load(source: str, device: str, max_length: int | None, *, local_files_only: bool) -> Any:
    """The loaded CrossEncoder, or the exception the library raised (returned, so callers phrase the message)."""
    try:
        from sentence_transformers import CrossEncoder

        return CrossEncoder(source, device=device, max_length=max_length, local_files_only=local_files_only)
    except Exception as exc:  # the library raises OSError, ValueError, KeyError, safetensors errors, ...
        return exc


def _checked(spec: str, model: Any) -> Any:
    """Reject models this reranker cannot score with: it reads one logit from a sequence-classification head."""
    hf_model = model.model
    _check_architectures(spec, [type(hf_model).__name__, *(getattr(hf_model.config, "architectures", None) or [])])
    labels = int(getattr(hf_model.config, "num_labels", 1))
    if labels != 1:
        reason = f"the model has {labels} output labels; only single-score cross-encoders (num_labels=1) are supported"
        _fail(spec, reason, reason)
    return model


def _saved_architectures(config_path: Path) -> list[str]:
    """``architectures`` from a config.json ([] when absent or unreadable; loading then reports the real problem)."""
    try:
        architectures = json.loads(config_path.read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return []
    return [str(name) for name in architectures] if isinstance(architectures, list) else []


def _check_architectures(spec: str, architectures: list[str]) -> None:
    """Refuse non-cross-encoders, e.g. a bi-encoder directory, which the library would give an untrained random head."""
    if not all(name.endswith("ForSequenceClassification") for name in architectures):
        saved_as = ", ".join(dict.fromkeys(architectures))
        reason = f"not a cross-encoder (saved as {saved_as}; expected a *ForSequenceClassification model)"
        _fail(spec, reason, reason)


def _fail(spec: str, detail: str, reason: str) -> NoReturn:
    raise RerankerLoadError(f"reranker: cannot load {spec}: {detail}", reason=reason, advise=True)


def _looks_like_path(spec: str) -> bool:
    """A spec that can only be a filesystem path (a hub id is ``name`` or ``org/name``)."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1 or os.path.isabs(spec)


def _one_line(exc: BaseException) -> str:
    """The library's reason on one line: exception type and first non-empty message line, capped at 200 chars."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
