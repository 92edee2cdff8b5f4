"""A sentence-transformers model run from its cached export with the ``tokenizers`` package and numpy: no torch.

What a query needs on the default (OpenVINO/ONNX) backend is the tokenizer, the exported transformer and the pooling
after it; importing torch and sentence-transformers for that costs seconds. :func:`load_light` reads the model
directory's own configuration (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
``config_sentence_transformers.json``, ``tokenizer.json``) and opens the export made earlier by ``runtime.export``;
it returns None whenever a model is not transformer + Pooling (+ Normalize), or no export is cached yet, and the
caller then loads the model through sentence-transformers as before.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twostage.runtime.backends import Runtime, load_runtime, require
from twostage.runtime.export import _complete, model_file

#: pooling modes this path implements; sentence-transformers < 6 saved one boolean key per mode
_MODES = ("mean", "cls", "max")
_LEGACY_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


#: texts of at most this many tokens (queries, not passages) are remembered by ``token_outputs(..., remember=True)``
RECENT_TOKENS = 64
#: and the remembered outputs take at most this many bytes (the least recently used go first): about 1,500 queries of
#: 12 tokens for a 384-d model, more than an evaluation's query file at once in most sets
RECENT_BYTES = 32 * 2**20


@dataclass
class TokenOutput:
    """One text's unpadded transformer outputs: token vectors ``(n, dim)`` float32 and their token ids."""

    token_embeddings: np.ndarray
    input_ids: np.ndarray


class RecentOutputs:
    """The latest short texts' outputs, so that a query is run through the model once per search: the first stage
    asks for its pooled vector and MaxSim for its token vectors, one call apart. Thread-safe (a server searches from
    several threads); the arrays kept are read-only, as callers share them."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = RECENT_BYTES if max_bytes is None else max_bytes  # read here: a benchmark sets it to 0
        self._outputs: OrderedDict[str, TokenOutput] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> TokenOutput | None:
        with self._lock:
            output = self._outputs.get(key)
            if output is not None:
                self._outputs.move_to_end(key)
            return output

    def put(self, key: str, output: TokenOutput) -> None:
        output.token_embeddings.flags.writeable = False
        output.input_ids.flags.writeable = False
        with self._lock:
            old = self._outputs.pop(key, None)
            self._bytes += _size(output) - (0 if old is None else _size(old))
            self._outputs[key] = output
            while self._bytes > self.max_bytes and self._outputs:
                self._bytes -= _size(self._outputs.popitem(last=False)[1])

    def clear(self) -> None:
        with self._lock:
            self._outputs.clear()
            self._bytes = 0


def _size(output: TokenOutput) -> int:
    return output.token_embeddings.nbytes + output.input_ids.nbytes


@dataclass
class LightEncoder:
    """Tokenizer + compiled export + pooling of one sentence-transformers model directory."""

    tokenizer: Any  # tokenizers.Tokenizer, truncating at max_seq_length, never padding
    runtime: Runtime
    dimension: int
    pooling: str
    normalize_module: bool
    max_seq_length: int
    pad_id: int
    special_ids: list[int]
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    recent: RecentOutputs = field(default_factory=RecentOutputs, repr=False)

    def set_max_seq_length(self, value: int) -> None:
        """Cut inputs at ``value`` tokens (special tokens included), as ``SentenceTransformer.max_seq_length`` does."""
        self.max_seq_length = int(value)
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        self.recent.clear()  # outputs of another cut

    def token_outputs(
        self, texts: Sequence[str], prompt: str = "", batch_size: int = 32, *, remember: bool = False
    ) -> list[TokenOutput]:
        """Per text (with ``prompt`` prepended), its token ids and contextual token vectors, in input order.
        ``remember``: short texts' outputs are taken from, and kept in, :attr:`recent` (read-only arrays): what
        queries ask, so that the first stage and MaxSim share one forward pass."""
        keys = [prompt + t for t in texts]
        out: list[TokenOutput | None] = [self.recent.get(k) if remember else None for k in keys]
        todo = [i for i, output in enumerate(out) if output is None]
        encodings = self.tokenizer.encode_batch([keys[i] for i in todo]) if todo else []
        ids = {i: np.asarray(e.ids, dtype=np.int64) for i, e in zip(todo, encodings)}
        order = sorted(todo, key=lambda i: -len(ids[i]))  # length-sorted batches pad little
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, i in enumerate(rows):
                input_ids[j, : len(ids[i])] = ids[i]
                mask[j, : len(ids[i])] = 1
            hidden = self.runtime({"input_ids": input_ids, "attention_mask": mask})
            for j, i in enumerate(rows):
                out[i] = TokenOutput(hidden[j, : len(ids[i])].astype(np.float32, copy=True), ids[i])
                if remember and len(ids[i]) <= RECENT_TOKENS:
                    self.recent.put(keys[i], out[i])  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    def encode(
        self,
        texts: Sequence[str],
        prompt: str = "",
        batch_size: int = 32,
        normalize: bool = True,
        *,
        remember: bool = False,
    ) -> np.ndarray:
        """Sentence vectors ``(n, dimension)`` float32: pooled as the model's Pooling module pools, then normalised
        (``remember``: as :meth:`token_outputs`)."""
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, out in enumerate(self.token_outputs(texts, prompt, batch_size, remember=remember)):
            tokens = out.token_embeddings
            if self.pooling == "cls":
                vectors[i] = tokens[0]
            elif self.pooling == "max":
                vectors[i] = tokens.max(axis=0)
            else:
                vectors[i] = tokens.mean(axis=0)
        if normalize or self.normalize_module:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def _read_json(path: Path) -> Any:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, (dict, list)) else None


def _pooling_mode(config: dict[str, Any]) -> str | None:
    """The Pooling config's one mode (``pooling_mode``, or the legacy boolean keys), if this path implements it."""
    mode = config.get("pooling_mode")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode is None:
        on = [_LEGACY_MODES.get(name) for name, value in config.items() if name.startswith("pooling_mode_") and value]
        mode = on[0] if len(on) == 1 else None
    return mode if mode in _MODES else None


def _module_kinds(modules: list[dict[str, Any]]) -> list[str]:
    """Class names of the modules (``Transformer``, ``Pooling``, ...), whatever package path a version saved."""
    return [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]


def _special_ids(root: Path, tokenizer: Any, tokenizer_config: dict[str, Any]) -> list[int]:
    """Ids of the tokenizer's special tokens, as transformers' ``all_special_ids`` lists them: the ``*_token`` and
    additional special tokens of ``special_tokens_map.json`` and ``tokenizer_config.json``."""
    names: list[Any] = []
    for mapping in (_read_json(root / "special_tokens_map.json") or {}, tokenizer_config):
        for key, value in mapping.items():
            if key.endswith("_token") or key in ("additional_special_tokens", "extra_special_tokens"):
                for item in value if isinstance(value, list) else [value]:
                    names.append(item.get("content") if isinstance(item, dict) else item)
    ids = {tokenizer.token_to_id(name) for name in names if isinstance(name, str)}
    return sorted(i for i in ids if i is not None)


def load_light(model_dir: str | Path, backend: str, fingerprint: str, *, export: bool = False) -> LightEncoder | None:
    """The model in ``model_dir`` on its cached ``backend`` export, or None when this path does not apply;
    ModelLoadError naming the extra when the backend's runtime is not installed. With ``export``, a missing export
    is built first, in a child process (``runtime.export_process``), so this process still imports no torch."""
    require(backend)
    root = Path(model_dir)
    modules = _read_json(root / "modules.json")
    if not isinstance(modules, list) or not modules:
        return None
    kinds = _module_kinds(modules)
    if kinds[0] != "Transformer" or modules[0].get("path", "") != "" or kinds[1:2] != ["Pooling"]:
        return None
    if any(kind != "Normalize" for kind in kinds[2:]):
        return None
    pooling_config = _read_json(root / modules[1]["path"] / "config.json")
    mode = _pooling_mode(pooling_config) if isinstance(pooling_config, dict) else None
    if mode is None or not (root / "tokenizer.json").is_file():
        return None
    prompts_config = _read_json(root / "config_sentence_transformers.json") or {}
    if prompts_config.get("prompts") and pooling_config.get("include_prompt") is False:
        return None  # prompt tokens left out of the pooling: sentence-transformers' own loop handles that
    st_config = _read_json(root / "sentence_bert_config.json") or {}
    if st_config.get("do_lower_case"):
        return None  # sentence-transformers lower-cases the text itself for such a model
    tokenizer_config = _read_json(root / "tokenizer_config.json") or {}
    max_length = st_config.get("max_seq_length")
    if not max_length:  # sentence-transformers' own rule: the tokenizer's limit, capped at the model's
        model_config = _read_json(root / "config.json") or {}
        limits = [model_config.get("max_position_embeddings"), tokenizer_config.get("model_max_length")]
        known = [int(v) for v in limits if isinstance(v, (int, float)) and v > 0]
        max_length = min(known) if known else 512
    target = model_file(fingerprint, backend, "feature-extraction")
    if not _complete(target.with_suffix(".json"), target):
        if not export:
            return None
        from twostage.runtime.export_process import export_in_child

        export_in_child(root, backend, fingerprint, int(max_length))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.no_padding()
    pad = tokenizer_config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    pad_id = tokenizer.token_to_id(pad) if isinstance(pad, str) else None
    encoder = LightEncoder(
        tokenizer=tokenizer,
        runtime=load_runtime(target, backend),
        dimension=int(pooling_config.get("embedding_dimension") or pooling_config["word_embedding_dimension"]),
        pooling=mode,
        normalize_module="Normalize" in kinds,
        max_seq_length=int(max_length),
        pad_id=pad_id or 0,
        special_ids=_special_ids(root, tokenizer, tokenizer_config),
        prompts=dict(prompts_config.get("prompts") or {}),
        default_prompt_name=prompts_config.get("default_prompt_name"),
    )
    encoder.set_max_seq_length(int(max_length))
    return encoder
