"""Metadata filters as SQL: ``key=value`` matched against a row's JSON metadata, text with text, numbers with numbers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def _match_clause(key: str, value: Any) -> tuple[str, list[Any]]:
    """SQL for "metadata[key] equals value", comparing text with text and numbers with numbers."""
    if '"' in key or "\\" in key:  # no JSON path can name such a key in SQLite: find it by exact name instead
        path = key
        typ = "(SELECT type FROM json_each(metadata) WHERE key = ?)"
        val = "(SELECT value FROM json_each(metadata) WHERE key = ?)"
    else:
        path = '$."' + key + '"'
        typ, val = "json_type(metadata, ?)", "json_extract(metadata, ?)"
    if value is None:
        return f"{typ} = 'null'", [path]
    if isinstance(value, bool):
        return f"{typ} = ?", [path, "true" if value else "false"]
    if isinstance(value, (int, float)):
        return (
            f"({typ} IN ('integer', 'real') AND {val} = ?) OR ({typ} = 'text' AND {val} = ?)",
            [path, path, value, path, path, _number_text(value)],
        )
    if isinstance(value, str):
        parts = [f"({typ} = 'text' AND {val} = ?)"]
        params: list[Any] = [path, path, value]
        number = _parse_number(value)
        if number is not None:
            parts.append(f"({typ} IN ('integer', 'real') AND {val} = ?)")
            params += [path, path, number]
        if value.strip().lower() in ("true", "false"):
            parts.append(f"{typ} = ?")
            params += [path, value.strip().lower()]
        return " OR ".join(parts), params
    # lists / dicts: compare the minified JSON text SQLite itself produces
    return f"{typ} IN ('array', 'object') AND {val} = json(?)", [path, path, json.dumps(value)]


def _parse_number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return number if np.isfinite(number) else None


def _number_text(value: int | float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
