"""Inference backends for both neural stages: names, the default, the query-compatibility rule, threads and runtimes.

- ``torch``: the model as sentence-transformers loads it (the reference).
- ``onnx``: ONNX Runtime on a graph fused by ONNX Runtime's transformer optimizer, fp32.
- ``onnx-int8``: that graph with dynamic int8 quantisation (per-channel int8 weights, activations quantised per batch);
  ONNX Runtime picks VNNI/AMX int8 kernels where the CPU has them.
- ``openvino``: OpenVINO at its default CPU precision: bf16 on CPUs with bf16 units (AMX, AVX512-BF16), fp32 elsewhere.
- ``openvino-int8``: OpenVINO after NNCF static int8 quantisation, calibrated on built-in texts.

Exports are made once and cached (``runtime/export.py``). The default is the fastest backend that keeps quality
(see ``benchmarks/results/speed.md``) among those whose dependencies are installed; ``TWOSTAGE_BACKEND`` overrides it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from twostage.runtime.models import ModelLoadError

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
#: backends whose vectors match torch's within float tolerance (bf16 included): interchangeable for queries
FLOAT_BACKENDS = ("torch", "onnx", "openvino")
#: the float backend each int8 backend was quantised from
_FLOAT_OF = {"onnx-int8": "onnx", "openvino-int8": "openvino"}
#: default order: the first whose dependencies are installed (measured in benchmarks/bench_speed.py)
PREFERENCE = ("openvino", "onnx", "torch")
_REQUIRES = {
    "onnx": ("onnxruntime", "onnx"),
    "onnx-int8": ("onnxruntime", "onnx"),
    "openvino": ("openvino",),
    "openvino-int8": ("openvino", "nncf"),
}
_EXTRA = {"onnx": "onnx", "onnx-int8": "onnx", "openvino": "openvino", "openvino-int8": "openvino"}


# --------------------------------------------------------------------------- choosing a backend
def missing_dependencies(backend: str) -> list[str]:
    """The Python packages ``backend`` needs that cannot be imported here."""
    missing = []
    for module in _REQUIRES.get(backend, ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
            found = False
        if not found:
            missing.append(module)
    return missing


def require(backend: str) -> None:
    """Raise ModelLoadError naming the ``pip install "twostage[...]"`` extra when ``backend`` cannot run here."""
    missing = missing_dependencies(backend)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ModelLoadError(
            f"backend {backend!r} needs {', '.join(missing)}, which {verb} not installed: "
            f'pip install "twostage[{_EXTRA[backend]}]" (or use --backend torch)'
        )


def default_backend(device: str = "cpu") -> str:
    """torch off the CPU; else ``$TWOSTAGE_BACKEND`` when set, else the first of PREFERENCE that can run here."""
    if not str(device).startswith("cpu"):
        return "torch"
    chosen = (os.environ.get("TWOSTAGE_BACKEND") or "").strip().lower()
    if chosen and chosen != "auto":
        return check_backend(chosen)
    return next(name for name in PREFERENCE if not missing_dependencies(name))


def check_backend(name: str) -> str:
    """``name`` if it is a known backend, else a ValueError listing them."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} (or auto)")
    return name


def resolve_backend(name: str | None, device: str = "cpu") -> str:
    """A concrete backend for ``name``: None or "auto" give :func:`default_backend`; others are validated."""
    if name is None or name == "auto":
        return default_backend(device)
    check_backend(name)
    if name != "torch" and not str(device).startswith("cpu"):
        raise ModelLoadError(f"backend {name!r} runs on the CPU only; use device='cpu' or backend 'torch'")
    return name


def compatible_query_backend(stored_backend: str | None, requested: str | None) -> str:
    """The backend that encodes queries (and new documents) for a collection built with ``stored_backend``.

    Rule: vectors from an int8 model are only comparable with that same int8 model, so an int8 collection is always
    searched with its own backend. The float backends (torch, onnx, openvino incl. bf16) agree within tolerance and
    are interchangeable: the requested one is used, and an int8 request becomes its float parent. A collection that
    records no backend was built before backends existed, i.e. with torch.
    """
    stored = stored_backend or "torch"
    check_backend(stored)
    if stored not in FLOAT_BACKENDS:
        return stored
    wanted = resolve_backend(requested)
    return wanted if wanted in FLOAT_BACKENDS else _FLOAT_OF[wanted]


# --------------------------------------------------------------------------- threads
def physical_cores() -> int:
    """CPU cores this process may use, counting each physical core once (hyper-threads share its units)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or usable
    except ImportError:
        physical = usable
    return max(1, min(usable, physical))


#: threads asked for with ``RuntimeConfig.threads`` (``--threads``); None = one per physical core. Process-wide, as
#: torch's intra-op pool is.
_THREADS: int | None = None


def configure_threads(threads: int | None = None) -> int:
    """Intra-op threads for torch and the runtimes: ``threads`` when given (remembered for later calls), else at most
    one per physical core; tokenizers single-threaded. Returns the thread count.

    More threads than cores (hyper-threads, a container seeing the host's cores) only contend; without an explicit
    count a lower torch setting made on purpose is kept. Tokenisation runs between forward passes or in other request
    threads, where its own thread pool would compete with the model's; ``TOKENIZERS_PARALLELISM`` set by the user wins.
    """
    global _THREADS
    if threads is not None:
        _THREADS = int(threads)
    cores = _THREADS or physical_cores()
    torch = sys.modules.get("torch")  # not imported for it: the exported runtimes' query path runs without torch
    if torch is not None and _THREADS is not None and torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    elif torch is not None and torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return cores


# --------------------------------------------------------------------------- runtimes
@dataclass
class Runtime:
    """A compiled exported model: ``runtime(inputs)`` maps int64 token arrays to the float32 output; thread-safe."""

    backend: str
    path: Path
    input_names: tuple[str, ...]
    precision: str
    run: Callable[[dict[str, np.ndarray]], np.ndarray] = field(repr=False)
    #: many batches at once, pipelined where the runtime can (OpenVINO: one stream per core); None = one by one
    run_many: Callable[[Iterable[dict[str, np.ndarray]]], list[np.ndarray]] | None = field(default=None, repr=False)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.run(self._feed(inputs)), dtype=np.float32)

    def map(self, batches: Iterable[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
        """Outputs for a stream of batches, in order: for throughput (documents), where one call is for latency."""
        if self.run_many is None:
            return [self(batch) for batch in batches]
        return [np.asarray(out, dtype=np.float32) for out in self.run_many(self._feed(b) for b in batches)]

    def _feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The runtime's inputs as contiguous int64 (token types default to zeros: single-segment text)."""
        ids = inputs["input_ids"]
        return {
            name: np.ascontiguousarray(inputs[name], dtype=np.int64) if name in inputs else np.zeros_like(ids, np.int64)
            for name in self.input_names
        }

    @property
    def tag(self) -> str:
        """Backend and compute precision, e.g. ``openvino/bf16``: what decides the exact numbers it produces."""
        return f"{self.backend}/{self.precision}"


def load_runtime(path: Path, backend: str) -> Runtime:
    """Open an exported model with ONNX Runtime or OpenVINO, one intra-op thread per physical core."""
    cores = configure_threads()
    if backend.startswith("onnx"):
        return _onnxruntime(path, backend, cores)
    return _openvino(path, backend, cores)


def _onnxruntime(path: Path, backend: str, cores: int) -> Runtime:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cores
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = tuple(i.name for i in session.get_inputs())
    precision = "int8" if backend.endswith("int8") else "fp32"
    return Runtime(backend, path, names, precision, lambda feed: session.run(None, feed)[0])


_OV_CORE: Any = None


def _openvino(path: Path, backend: str, cores: int) -> Runtime:
    import openvino as ov

    global _OV_CORE
    if _OV_CORE is None:
        _OV_CORE = ov.Core()
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": cores}
    # OpenVINO keeps the compiled model beside the export (keyed by device, settings and version): a later process
    # loads it instead of compiling again, about 0.7 s less start-up for MiniLM here
    config["CACHE_DIR"] = str(path.parent / "compiled")
    if backend.endswith("int8"):
        # int8 layers run in int8 either way; the rest stays fp32, since bf16 on top of int8 ranges loses too much
        config["INFERENCE_PRECISION_HINT"] = "f32"
    # what float ops run in (bf16 on CPUs with bf16 units, else f32), as the device reports it for this config: no
    # compiled model needed, so a process that only streams documents (run_many) never compiles the latency copy
    hint = config.get("INFERENCE_PRECISION_HINT") or _OV_CORE.get_property("CPU", "INFERENCE_PRECISION_HINT")
    hint = hint if isinstance(hint, str) else hint.get_type_name()
    name = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(hint, hint)
    precision = f"int8+{name}" if backend.endswith("int8") else name
    names = tuple(port.get_any_name() for port in _OV_CORE.read_model(str(path)).inputs)
    local = threading.local()  # an infer request serves one thread at a time
    compiled: list[Any] = []  # the LATENCY-compiled model, made on the first single call
    lock = threading.Lock()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            with lock:
                if not compiled:
                    compiled.append(_OV_CORE.compile_model(str(path), "CPU", config))
            request = local.request = compiled[0].create_infer_request()
        return request.infer(feed)[0]

    return Runtime(backend, path, names, precision, run, _openvino_pipeline(path, config))


def _openvino_pipeline(
    path: Path, config: dict[str, Any]
) -> Callable[[Iterable[dict[str, np.ndarray]]], list[np.ndarray]]:
    """Batches through a THROUGHPUT-compiled copy: one single-threaded stream per core, requests in flight together.

    On a few cores this beats one multi-threaded request per batch (no per-operator thread barriers), and the next
    batch is tokenised while the current ones run. Compiled on first use; one caller at a time.
    """
    import openvino as ov

    state: dict[str, Any] = {}
    lock = threading.Lock()

    def run_many(feeds: Iterable[dict[str, np.ndarray]]) -> list[np.ndarray]:
        with lock:
            if "queue" not in state:
                compiled = _OV_CORE.compile_model(str(path), "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT"})
                state["queue"] = ov.AsyncInferQueue(
                    compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
                )
            queue, results = state["queue"], cast(dict[int, Any], {})
            queue.set_callback(
                lambda request, index: results.__setitem__(index, request.get_output_tensor(0).data.copy())
            )
            count = 0
            for count, feed in enumerate(feeds, start=1):
                queue.start_async(feed, count - 1)
            queue.wait_all()
            return [results[i] for i in range(count)]

    return run_many


# --------------------------------------------------------------------------- sentence-transformers
def sample_inputs(tokenizer: Any, texts: Sequence[Any], max_length: int | None) -> dict[str, np.ndarray]:
    """Tokenise ``texts`` (strings or (query, passage) pairs) as one padded numpy batch of model inputs."""
    pairs = bool(texts) and isinstance(texts[0], (tuple, list))
    args = ([t[0] for t in texts], [t[1] for t in texts]) if pairs else (list(texts),)
    kwargs = {"max_length": max_length} if max_length else {}
    batch = tokenizer(*args, padding=True, truncation=True, return_tensors="np", **kwargs)
    return {
        k: np.asarray(v, dtype=np.int64)
        for k, v in batch.items()
        if k in ("input_ids", "attention_mask", "token_type_ids")
    }


def calibration_batches(
    tokenizer: Any, texts: Sequence[Any], max_length: int | None, size: int = 8
) -> list[dict[str, np.ndarray]]:
    """``texts`` in tokenised batches of ``size``, for static quantisation."""
    return [sample_inputs(tokenizer, texts[i : i + size], max_length) for i in range(0, len(texts), size)]


def _runtime_module(runtime: Runtime, config: Any, output: str) -> Any:
    """A parameter-free torch module that sentence-transformers calls in place of the transformers model.

    It answers ``forward(input_ids=..., attention_mask=..., ...)`` with ``{output: tensor}``, as Optimum's ONNX and
    OpenVINO models do when sentence-transformers loads them itself, so pooling, prompts and normalisation stay the
    library's.
    """
    import torch

    class RuntimeTransformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.runtime = runtime
            self.config = config

        def forward(
            self, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None, **_: Any
        ) -> dict:
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            arrays = {k: v.cpu().numpy() for k, v in given.items() if v is not None}
            return {output: torch.from_numpy(self.runtime(arrays))}

    return RuntimeTransformer()


def use_backend(st_model: Any, backend: str, fingerprint: str, runtime: Runtime | None = None) -> Runtime | None:
    """Make a loaded SentenceTransformer run on ``backend`` (export cached per fingerprint; ``runtime``, when given,
    is that export already opened); None for torch."""
    if backend == "torch":
        return None
    require(backend)
    from twostage.runtime.calibration import calibration_texts

    first = st_model[0]
    hf_model = getattr(first, "auto_model", None)
    if hf_model is None or not hasattr(hf_model, "config"):
        raise ModelLoadError(f"backend {backend!r} needs a transformers model as the first module; use backend 'torch'")
    tokenizer = st_model.tokenizer
    limit = st_model.max_seq_length
    runtime = runtime or exported_runtime(
        hf_model,
        backend=backend,
        fingerprint=fingerprint,
        task="feature-extraction",
        sample=sample_inputs(tokenizer, ["a short query", "a somewhat longer passage of text to encode"], limit),
        calibration=lambda: calibration_batches(tokenizer, calibration_texts(), limit),
    )
    first.model = _runtime_module(runtime, hf_model.config, "last_hidden_state")
    return runtime


def exported_runtime(
    model: Any, *, backend: str, fingerprint: str, task: str, sample: dict, calibration: Callable
) -> Runtime:
    """Export (or reuse the cached export of) a transformers model and open it; failures become one ModelLoadError."""
    from twostage.runtime.export import cached_export

    try:
        path = cached_export(
            model, backend=backend, fingerprint=fingerprint, task=task, sample=sample, calibration=calibration
        )
        return load_runtime(path, backend)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - export and runtime errors read the same to the user
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"could not prepare the {backend} backend ({type(exc).__name__}: {reason}); use --backend torch"
        ) from exc
