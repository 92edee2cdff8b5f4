"""Optional dependencies: what only some features need is an extra of ``pip install twostage``, imported on use.

``require(module, extra, feature)`` imports ``module`` or raises :class:`MissingExtra`, whose one-line message names
the feature and the extra to install; the CLI prints it and exits 2. Extras (pyproject.toml):

- ``train``: ``twostage train`` (accelerate for transformers' Trainer; datasets for the training rows)
- ``hf``: Hugging Face datasets by name (``twostage eval BeIR/scifact``, ``twostage index <hub name>``)
- ``parquet``: Parquet corpora (pyarrow)
- ``plots``: the quality/latency plots ``twostage eval`` writes (matplotlib)
- ``ray``: ``--ray`` (distributed indexing and sharded search on a Ray cluster)
- ``onnx``, ``openvino``: inference backends beyond the default (runtime/backends.py names those itself)
- ``documents``: text extraction from PDF, HTML and DOCX files (twostage/ingest)
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtra(ImportError):
    """A feature's optional dependency is not installed; the message says which extra brings it."""


def install_hint(extra: str) -> str:
    return f'pip install "twostage[{extra}]"'


def missing_message(module: str, extra: str, feature: str) -> str:
    """The one line a user reads: what needs what, and the command that installs it."""
    package = module.split(".")[0]
    return f"{feature} needs {package}, which is not installed: {install_hint(extra)}"


def available(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``module`` imported, or :class:`MissingExtra` naming ``feature`` and the ``extra`` that installs it.

    Only the module itself being absent is turned into that message; an installed package that fails to import
    (a broken install, a missing system library) raises as it is, since installing the extra would not help."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        if err.name is not None and err.name.split(".")[0] != top:
            raise
        raise MissingExtra(missing_message(module, extra, feature)) from None
