"""One runtime configuration (device, backend, batch size, threads), built once by the CLI, server, eval, training
or the Python API and handed to the engine, so every stage runs with the same settings."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass, replace
from typing import Any

from twostage.runtime.cache_dir import cache_root as cache_root  # re-exported: its old home

DEVICES = ("cpu", "cuda", "auto")


class RuntimeConfigError(ValueError):
    """A device/backend/batch-size/threads setting that cannot work; its message is one line for the user."""


def check_device(device: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; anything else is a RuntimeConfigError (a ValueError, one line)."""
    name = str(device).strip().lower()
    if name in DEVICES:
        return name
    if name.startswith("cuda:") and name[5:].isdigit():
        return name
    raise RuntimeConfigError(f"unknown device {device!r}: choose cpu, cuda, cuda:N or auto")


def _may_have_gpu() -> bool:
    """False only where no GPU can be seen without importing torch (seconds): Linux with no NVIDIA or WSL GPU device
    node. Elsewhere True, and torch decides."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


def resolve_device(device: str = "auto") -> str:
    """The concrete device: ``auto`` is ``cuda`` when torch is already installed and sees a GPU, else ``cpu``.

    torch is imported only when asked for ``auto``/``cuda`` and installed, so a CPU query path never pays for it."""
    name = check_device(device)
    if name == "cpu" or (name == "auto" and not _may_have_gpu()):
        return "cpu"
    try:
        import torch
    except ImportError:
        torch = None
    available = bool(torch is not None and torch.cuda.is_available())
    if name == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise RuntimeConfigError(f"device {device!r} was asked for, but torch sees no CUDA device on this machine")
    return name


@dataclass(frozen=True)
class RuntimeConfig:
    """How the neural stages run. ``backend`` "auto" (or None) means this machine's measured choice per stage on the
    CPU (``runtime.autotune``), torch on a GPU; ``threads`` None means one per physical core."""

    device: str = "auto"
    backend: str | None = "auto"
    batch_size: int = 32
    threads: int | None = None

    def __post_init__(self) -> None:
        from twostage.runtime.backends import BACKENDS

        object.__setattr__(self, "device", check_device(self.device))
        if self.backend not in (None, "auto", *BACKENDS):
            raise RuntimeConfigError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)} (or auto)")
        if self.batch_size < 1:
            raise RuntimeConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise RuntimeConfigError(f"threads must be at least 1, got {self.threads}")

    def with_(self, **changes: Any) -> RuntimeConfig:
        """A copy with some fields changed (e.g. the backend a collection was built with)."""
        return replace(self, **changes)

    def placement(self) -> tuple[str, str]:
        """The concrete ``(device, backend)`` new models run with.

        A CPU-only backend (onnx, openvino and their int8 forms) under device ``auto`` runs on the CPU; under an
        explicit ``cuda`` it is a RuntimeConfigError. Auto gives the device's default preference; the engine and the
        stages replace it on the CPU by the measured choice for their model (``runtime.autotune``)."""
        from twostage.runtime.backends import resolve_backend

        cpu_only = self.backend not in (None, "auto", "torch")
        if cpu_only and self.device not in ("cpu", "auto"):
            raise RuntimeConfigError(
                f"backend {self.backend!r} runs on the CPU only; use --device cpu (or auto), or --backend torch"
            )
        device = "cpu" if cpu_only else resolve_device(self.device)
        return device, resolve_backend(self.backend, device)


def runtime_config(runtime: RuntimeConfig | None = None, **shorthands: object) -> RuntimeConfig:
    """``runtime`` (default ``RuntimeConfig()``) with the shorthand keywords that are not None applied, e.g.
    ``runtime_config(None, backend="onnx", batch_size=None)``: how the engine accepts ``backend=``/``batch_size=``."""
    changes = {name: value for name, value in shorthands.items() if value is not None}
    base = runtime if runtime is not None else RuntimeConfig()
    return base.with_(**changes) if changes else base


def add_runtime_arguments(parser: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    """``--device``, ``--backend``, ``--batch-size`` and ``--threads``: the options every command that runs a model
    shares (``batch_size=False`` where the command's own ``--batch-size`` means something else, as in training)."""
    from twostage.runtime.backends import BACKENDS

    group = parser.add_argument_group("runtime")
    group.add_argument(
        "--device",
        type=_device_arg,
        default="auto",
        metavar="cpu|cuda|cuda:N|auto",
        help="where the models run (default auto: cuda when torch sees a GPU, else cpu)",
    )
    group.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default="auto",
        help="inference backend for both models (default auto: on the CPU the fastest backend that ranks like torch, "
        "measured once per machine and model, see 'twostage info --backends'; torch on a GPU; a collection built "
        "with an int8 backend is always searched with it)",
    )
    if batch_size:
        group.add_argument(
            "--batch-size",
            type=int,
            default=RuntimeConfig.batch_size,
            help=f"texts per encoder / reranker batch (default {RuntimeConfig.batch_size})",
        )
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="intra-op threads for the models (default one per physical core)",
    )


def runtime_from_args(args: argparse.Namespace, *, batch_size: bool = True) -> RuntimeConfig:
    """The one RuntimeConfig for parsed :func:`add_runtime_arguments` options (a bad value: RuntimeConfigError);
    ``batch_size=False`` as there."""
    size = getattr(args, "batch_size", None) if batch_size else None
    return RuntimeConfig(
        device=getattr(args, "device", "auto"),
        backend=getattr(args, "backend", None),
        batch_size=size if size is not None else RuntimeConfig.batch_size,
        threads=getattr(args, "threads", None),
    )


def _device_arg(text: str) -> str:
    """argparse type for ``--device``: a bad name is a usage error naming the choices."""
    try:
        return check_device(text)
    except RuntimeConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
