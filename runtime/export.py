"""Export a transformers model once per (fingerprint, backend, task) and keep the result on disk for every later load.

Layout: ``$TWOSTAGE_CACHE_DIR/models/<fingerprint>/<backend>/<task>.onnx`` (or ``.xml`` + ``.bin`` for OpenVINO) and
``<task>.json`` describing the build. The JSON is written last, so files without it are an interrupted export and
are rebuilt. Every step is the library call that sentence-transformers' own export helpers reach through Optimum:
``torch.onnx.export`` (``backend="onnx"``), ONNX Runtime's transformer optimizer (``export_optimized_onnx_model``),
its ``quantize_dynamic`` (``export_dynamic_quantized_onnx_model``), ``openvino.convert_model`` (``backend="openvino"``)
and NNCF's ``quantize`` (``export_static_quantized_openvino_model``).

Why not those helpers themselves: they need Optimum's backends, and neither installs beside sentence-transformers 6
(measured with pip, 2026-11): ``optimum-onnx`` requires transformers < 5 (sentence-transformers 6 requires >= 5), and
``optimum-intel[openvino]`` replaces torch with a multi-GB CUDA build and pins transformers 5.5. Calling the same
libraries directly keeps the dependency set small and the CPU torch build in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from twostage.runtime.cache_dir import cache_root

#: bump when the export recipe changes, so older cached exports are rebuilt
EXPORT_FORMAT = 1

Inputs = dict[str, np.ndarray]
#: the transformers output each task's runtime returns
OUTPUTS = {"feature-extraction": "last_hidden_state", "sequence-classification": "logits"}
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
# Architectures whose graphs ONNX Runtime's "bert" optimizer fuses (attention, layer norm, GELU).
_FUSABLE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert"}

log = logging.getLogger(__name__)


def models_root() -> Path:
    """``<cache root>/models`` (see ``runtime.config.cache_root``): beside the embedding cache."""
    return cache_root() / "models"


def model_file(fingerprint: str, backend: str, task: str) -> Path:
    """Where the exported model for this fingerprint, backend and task lives."""
    suffix = ".xml" if backend.startswith("openvino") else ".onnx"
    return models_root() / fingerprint / backend / f"{task}{suffix}"


def cached_export(
    model: Any,
    *,
    backend: str,
    fingerprint: str,
    task: str,
    sample: Inputs,
    calibration: Callable[[], list[Inputs]],
) -> Path:
    """The exported model file, built from the loaded transformers ``model`` only when no complete export exists.

    ``sample`` is one tokenised batch (traces the graph); ``calibration`` yields tokenised batches for static int8.
    """
    target = model_file(fingerprint, backend, task)
    meta = target.with_suffix(".json")
    if _complete(meta, target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        built = _build(model, backend, task, _ordered(sample), calibration, Path(tmp))
        for path in sorted(built.parent.glob(built.stem + ".*"), key=lambda p: p == built):  # weights first, graph last
            os.replace(path, target.parent / (target.stem + path.suffix))
    info = {
        "format": EXPORT_FORMAT,
        "backend": backend,
        "task": task,
        "fingerprint": fingerprint,
        "seconds": round(time.perf_counter() - started, 1),
        "versions": _versions(backend),
    }
    partial = meta.with_suffix(f".json.{os.getpid()}")
    partial.write_text(json.dumps(info, indent=2), encoding="utf-8")
    os.replace(partial, meta)
    log.info("exported %s for %s in %.1fs: %s", task, backend, info["seconds"], target)
    return target


def _complete(meta: Path, target: Path) -> bool:
    """True when a finished export of the current format is on disk."""
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights_ok = target.suffix != ".xml" or target.with_suffix(".bin").is_file()
    return info.get("format") == EXPORT_FORMAT and target.is_file() and weights_ok


def _ordered(sample: Inputs) -> Inputs:
    """The model inputs in forward-signature order, as int64; an attention mask is added when missing."""
    out = {name: np.asarray(sample[name], dtype=np.int64) for name in INPUT_ORDER if name in sample}
    out.setdefault("attention_mask", np.ones_like(out["input_ids"]))
    return {name: out[name] for name in INPUT_ORDER if name in out}


def _build(
    model: Any, backend: str, task: str, sample: Inputs, calibration: Callable[[], list[Inputs]], tmp: Path
) -> Path:
    """Run the export recipe for ``backend`` inside ``tmp``; returns the main output file."""
    if backend in ("onnx", "onnx-int8"):
        raw = _export_onnx(model, task, sample, tmp / "raw.onnx")
        fused = _fuse(raw, tmp / "fused.onnx", model.config)
        final = tmp / f"{task}.onnx"
        if backend == "onnx":
            shutil.move(fused, final)
        else:
            _quantize_dynamic(fused, final)
        for extra in tmp.glob("*"):
            if extra != final and extra.is_file():
                extra.unlink()
        return final
    if backend in ("openvino", "openvino-int8"):
        import openvino as ov

        converted = _to_openvino(model, task, sample)
        if backend == "openvino-int8":
            converted = _quantize_static_openvino(converted, calibration())
        final = tmp / f"{task}.xml"
        ov.save_model(converted, str(final), compress_to_fp16=False)
        return final
    raise ValueError(f"no export recipe for backend {backend!r}")


def _exportable(model: Any, task: str, names: tuple[str, ...]) -> Any:
    """``model`` as a module of positional int64 tensors (in ``INPUT_ORDER``) returning one float tensor."""
    import torch

    output = OUTPUTS[task]

    class Exportable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(**{k: given[k] for k in names}, return_dict=True)[output]

    return Exportable().eval()


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """Trace with eager attention: ONNX Runtime fuses its pattern into one Attention op, which SDPA's export defeats."""
    previous = getattr(model.config, "_attn_implementation", None)
    switched = False
    if previous not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
            switched = True
        except Exception:  # noqa: BLE001 - an architecture without eager attention exports as it is
            pass
    try:
        yield
    finally:
        if switched:
            model.set_attn_implementation(previous)


def _export_onnx(model: Any, task: str, sample: Inputs, path: Path) -> Path:
    """torch.onnx.export (TorchScript exporter) with dynamic batch and sequence axes."""
    import torch

    names = tuple(sample)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["output"] = {0: "batch", 1: "sequence"} if task == "feature-extraction" else {0: "batch"}
    args = tuple(torch.from_numpy(sample[name]) for name in names)
    with _eager_attention(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _exportable(model, task, names),
            args,
            str(path),
            input_names=list(names),
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path


def _fuse(source: Path, target: Path, config: Any) -> Path:
    """ONNX Runtime's transformer optimizer (attention, layer-norm and GELU fusion); unfused where it does not apply."""
    if getattr(config, "model_type", None) not in _FUSABLE:
        return source
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=1,
        )
        optimized.save_model_to_file(str(target))
    except Exception as exc:  # noqa: BLE001 - fusion is an optimisation; the unfused graph computes the same
        log.warning("ONNX Runtime could not fuse %s (%s); using the unfused graph", source.name, exc)
        return source
    return target


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library warnings that only concern their own tooling (pre-processing advice, unused config keys)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _quantize_dynamic(source: Path, target: Path) -> None:
    """Dynamic int8: weights quantised per output channel now, activations per batch at run time (u8 x s8 = VNNI)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # fused contrib ops (Attention, SkipLayerNormalization) have no shape inference; their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _to_openvino(model: Any, task: str, sample: Inputs) -> Any:
    """openvino.convert_model straight from PyTorch (no ONNX needed), inputs named and dynamic as in ``sample``."""
    import openvino as ov
    import torch

    example = {name: torch.from_numpy(array) for name, array in sample.items()}
    with torch.no_grad(), warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        return ov.convert_model(_exportable(model, task, tuple(sample)), example_input=example)


def _quantize_static_openvino(ov_model: Any, batches: list[Inputs]) -> Any:
    """NNCF post-training int8 quantisation (what sentence-transformers' OpenVINO int8 export runs), transformer preset."""
    import nncf

    nncf.set_log_level(logging.ERROR)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        return nncf.quantize(
            ov_model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(batches),
        )


def _versions(backend: str) -> dict[str, str]:
    """Library versions that built the export, for the record."""
    names = ["torch", "transformers"] + (["onnx", "onnxruntime"] if backend.startswith("onnx") else ["openvino"])
    if backend == "openvino-int8":
        names.append("nncf")
    out = {}
    for name in names:
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:  # noqa: BLE001 - provenance only
            out[name] = "?"
    return out
