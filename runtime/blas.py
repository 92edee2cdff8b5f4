"""numpy's BLAS held to one thread while a write runs beside the encoder.

A write pools each passage's tokens (``indexes.token_pooling``) in the writer thread while the encoder thread runs
the model on every core. The pooling's products are small (a passage's tokens against themselves), and numpy's
OpenBLAS spreads them over its own threads, which then busy-wait on the cores the encoder needs: on one thread the
same products leave the encoder alone (docs/benchmarks/indexing.md). The setting is the
process's, so it is taken while any write runs and given back when the last one ends (a search running beside a
write in the same process, as the server may, gets one BLAS thread meanwhile too); other libraries' thread pools
(FAISS's, the model backend's) are left as they are. Without ``threadpoolctl``'s view of numpy's BLAS (a numpy
built against a system BLAS it cannot tell apart) nothing changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_writes = 0
_limiter: Any = None


@contextmanager
def numpy_blas_single_threaded() -> Iterator[None]:
    """numpy's BLAS on one thread inside the block (counted across threads: the first to enter limits it, the last
    to leave restores what it was)."""
    global _writes, _limiter
    with _lock:
        if _writes == 0:
            _limiter = _limit_numpy_blas()
        _writes += 1
    try:
        yield
    finally:
        with _lock:
            _writes -= 1
            if _writes == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def _limit_numpy_blas() -> Any:
    """A threadpoolctl limiter holding the BLAS that numpy ships (its wheel's ``numpy.libs``) to one thread, or None
    where it cannot be told apart."""
    try:
        import numpy
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    own = Path(numpy.__file__).resolve().parent
    bundled = {str(own), str(own.parent / "numpy.libs")}
    controller = ThreadpoolController()
    paths = [
        lib.filepath
        for lib in controller.lib_controllers
        if lib.user_api == "blas" and str(Path(lib.filepath).resolve().parent) in bundled
    ]
    if not paths:
        return None
    return controller.select(filepath=paths).limit(limits=1)
