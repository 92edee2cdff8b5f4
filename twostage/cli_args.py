"""Command-line options shared by several commands (``--wait``, corpus fields, ``--ray``, the encode and search
options) and their value checks, for ``twostage.cli`` and ``twostage.server_cli`` alike."""

from __future__ import annotations

import argparse


def add_wait_argument(p: argparse.ArgumentParser) -> None:
    """``--wait SECONDS``: how long a write waits for another process's write (the collection's writer lock)."""
    from twostage.indexes.lock import DEFAULT_WAIT

    p.add_argument(
        "--wait",
        type=wait_seconds,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to wait for another process writing to the collection (default {DEFAULT_WAIT:g})",
    )


def corpus_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id-field", help="field holding the document id (guessed: id, _id, doc_id, docid, pid)")
    p.add_argument("--text-field", help="field holding the text (guessed: text, contents, passage, body)")
    p.add_argument("--title-field", help="field holding the title (guessed: title)")
    p.add_argument("--split", default="train", help="split of a Hugging Face dataset (default train)")


def wait_seconds(text: str) -> float:
    """``--wait``: seconds, 0 or more (``inf`` waits as long as it takes); NaN and negative values are refused."""
    value = float(text)
    if not value >= 0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def pool_factor(text: str) -> float:
    from twostage.indexes.token_pooling import check_factor

    try:
        return check_factor(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def ray_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--ray", default=None, metavar="auto|HOST:PORT", help=text + " (pip install 'twostage[ray]')")


def encode_options(p: argparse.ArgumentParser) -> None:
    from twostage.runtime.config import add_runtime_arguments

    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_runtime_arguments(p)


def search_options(p: argparse.ArgumentParser) -> None:
    from twostage.runtime.config import add_runtime_arguments

    from .search_request import add_search_arguments

    add_search_arguments(p)
    add_runtime_arguments(p)
