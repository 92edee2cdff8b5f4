"""Errors the engine raises for misuse that the user can fix (bad query, wrong model for a collection, ...)."""

from __future__ import annotations


class UsageError(ValueError):
    """A request that cannot be served as given; the message says what to change."""
