"""Where a collection's queries are encoded: the device and backend its stored vectors allow, as ``Engine.open``
and the engine layer's ``stages.bi_encoder`` both place them."""

from __future__ import annotations

from pathlib import Path

from twostage.indexes.protocols import ManifestLike
from twostage.runtime.autotune import measured, stage_backend
from twostage.runtime.backends import FLOAT_BACKENDS, compatible_query_backend
from twostage.runtime.config import RuntimeConfig

from .errors import UsageError


def query_placement(manifest: ManifestLike, runtime: RuntimeConfig, path: str | Path) -> tuple[str, str]:
    """The device and backend that encode queries for the collection ``manifest`` describes (at ``path``, for the
    message): ``compatible_query_backend`` of its backend and the requested one, ``auto`` being this machine's cached
    choice for its model (never measured at query time). An int8 collection's CPU-only backend runs on the CPU under
    device ``auto`` and is refused under an explicit ``cuda``."""
    stored_backend = manifest.extra.get("backend")
    device, wanted = runtime.placement()
    if measured(runtime.backend, device):
        wanted = stage_backend("auto", device, "bi-encoder", manifest.model_fingerprint)
    query_backend = compatible_query_backend(stored_backend, wanted)
    if query_backend not in FLOAT_BACKENDS and device != "cpu":
        if runtime.device != "auto":
            raise UsageError(
                f"collection {path} was built with the {stored_backend} backend, which runs on the CPU "
                f"only; search it with --device cpu (or auto)"
            )
        device = "cpu"
    return device, query_backend
