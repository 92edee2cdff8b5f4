"""Input limits of the corpus readers: how deep a metadata value may nest and how long a field may be.

Documented numbers (README "Collections") so that hostile or broken input (a line nesting 100,000 levels, a
gigabyte title) is one line naming file, line and field, never a ``RecursionError`` or an out-of-memory kill.
They sit far above real corpora: MS MARCO passages are under 5,000 characters, BEIR documents under 1M.
"""

from __future__ import annotations

from typing import Any

#: levels a metadata value may nest (``{"a": {"b": [1]}}`` is 2 deep below its field)
MAX_NESTING = 32
#: characters of one document's text (long documents are split into passages later, not rejected here)
MAX_TEXT_CHARS = 10_000_000
#: characters of an id and of a title
MAX_ID_CHARS = 1_000
MAX_TITLE_CHARS = 10_000
#: characters of one metadata field's value, as JSON
MAX_METADATA_CHARS = 1_000_000


def nesting(value: Any, limit: int = MAX_NESTING) -> int:
    """How deep lists and dicts nest in ``value`` (0 for a scalar), counted without recursion and no further than
    ``limit + 1``: enough to say a value is too deep without walking all of it."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((v, depth) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def deep_field(text: str, limit: int = MAX_NESTING) -> str | None:
    """The top-level key of a JSON object text under which brackets first nest deeper than ``limit`` (for a line the
    JSON parser gave up on), or None. A plain scan over the characters: strings, escapes and brackets only."""
    depth, key, last_string, in_string, escaped, start = 0, None, None, False, False, 0
    for pos, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string, last_string = False, text[start:pos]
        elif ch == '"':
            in_string, start = True, pos + 1
        elif ch == ":" and depth == 1:
            key = last_string
        elif ch in "[{":
            depth += 1
            if depth > limit + 1:
                return key
        elif ch in "]}":
            depth -= 1
    return None
