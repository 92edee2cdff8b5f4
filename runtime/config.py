"""One runtime configuration (device, backend, batch size, threads), built once by the CLI, server, eval, training
or the Python API and handed to the engine, so every stage runs with the same settings."""
from __future__ import annotations

from dataclasses import dataclass, replace

DEVICES = ("cpu", "cuda", "auto")


def check_device(device: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; anything else is a usage error (ValueError, a one-line message)."""
    name = str(device).strip().lower()
    if name in DEVICES:
        return name
    if name.startswith("cuda:") and name[5:].isdigit():
        return name
    raise ValueError(f"unknown device {device!r}: choose cpu, cuda, cuda:N or auto")


def resolve_device(device: str = "auto") -> str:
    """The concrete device: ``auto`` is ``cuda`` when torch is already installed and sees a GPU, else ``cpu``.

    torch is imported only when asked for ``auto``/``cuda`` and installed, so a CPU query path never pays for it."""
    name = check_device(device)
    if name == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        torch = None
    available = bool(torch is not None and torch.cuda.is_available())
    if name == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device on this machine")
    return name


@dataclass(frozen=True)
class RuntimeConfig:
    """How the neural stages run. ``backend`` None means the default for the device; ``threads`` None means one per
    physical core."""

    device: str = "auto"
    backend: str | None = None
    batch_size: int = 32
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", check_device(self.device))
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    def with_(self, **changes: object) -> "RuntimeConfig":
        """A copy with some fields changed (e.g. the backend a collection was built with)."""
        return replace(self, **changes)
