"""What CPU this is: its model name and the instruction-set extensions that decide which inference backend is fastest
(AVX-512, VNNI, bf16, AMX), read from /proc/cpuinfo; benchmarks print it beside every speed figure."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

#: the extensions that change which backend wins (int8 and bf16 matrix units)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name and which of :data:`ISA_FLAGS` it has."""

    model: str
    isa: tuple[str, ...]


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """The first processor's model name and flags (``platform.processor()`` and no flags where unreadable)."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == (platform.processor() or platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return CpuInfo(model, tuple(f for f in ISA_FLAGS if f in flags))
