"""Optional libraries: imported when a file needs one, or a one-line error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from twostage.errors import UsageError


class MissingExtra(UsageError):
    """An optional library is not installed; the message says which ``twostage[extra]`` brings it."""


def require(module: str, extra: str) -> ModuleType:
    """``module`` imported, or :class:`MissingExtra` naming ``pip install 'twostage[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"reading this kind of file needs the module {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'twostage[{extra}]'"
        ) from None
