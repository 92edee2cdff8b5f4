"""FAISS factory strings: which index ``auto`` (or a named type) means for a collection's size, and empty FAISS
indexes built from a factory string with external ids."""

from __future__ import annotations

import math

import faiss

FLAT_BELOW = 100_000  #: ``auto`` picks exact search below this many vectors


HNSW_BELOW = 2_000_000  #: ... HNSW below this many, IVF-PQ from here on


HNSW_M = 32


HNSW_EF_SEARCH = 128


NAMED_TYPES = ("auto", "flat", "hnsw", "ivfpq")


def resolve_factory(dimension: int, index_type: str = "auto", expected_size: int | None = None) -> str:
    """The FAISS factory string for a named index type (``auto``/``flat``/``hnsw``/``ivfpq``); others pass through."""
    kind = index_type.strip()
    if kind.lower() == "auto":
        n = expected_size or 0
        kind = "flat" if n < FLAT_BELOW else "hnsw" if n < HNSW_BELOW else "ivfpq"
    kind_lower = kind.lower()
    if kind_lower == "flat":
        return "Flat"
    if kind_lower == "hnsw":
        return f"HNSW{HNSW_M}"
    if kind_lower == "ivfpq":
        n = expected_size or FLAT_BELOW
        nlist = max(1, int(round(4 * math.sqrt(n))))
        return f"IVF{nlist},PQ{_pq_subquantizers(dimension)}"
    return kind


def _pq_subquantizers(dimension: int) -> int:
    """The largest divisor of ``dimension`` that is at most min(64, dimension/2): 64 bytes a vector for 384 or 768-d."""
    limit = max(1, min(64, dimension // 2))
    return max(m for m in range(1, limit + 1) if dimension % m == 0)


def new_faiss_index(dimension: int, factory: str) -> faiss.Index:
    """An empty inner-product index for ``factory`` that accepts external ids (IVF natively, others via IDMap2)."""
    try:
        base = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = faiss_reason(err)
        raise ValueError(
            f"unknown index type {factory!r}: expected one of {', '.join(NAMED_TYPES)} or a FAISS factory string ({reason})"
        ) from None
    if not (isinstance(base, (faiss.IndexIDMap, faiss.IndexIDMap2)) or faiss.try_extract_index_ivf(base) is not None):
        # IVF stores external ids itself and removes by them; wrapping it in IDMap would break remove_ids.
        base = faiss.index_factory(dimension, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    for part in (innermost(base), faiss.try_extract_index_ivf(base)):
        if part is not None and hasattr(part, "do_polysemous_training"):
            # Polysemous training only serves Hamming-filtered search (off by default) and is 10x slower.
            part.do_polysemous_training = False
    return base


def innermost(index: faiss.Index) -> faiss.Index:
    """The index under IDMap / PreTransform wrappers, downcast to its concrete class."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index


def new_buffer(dimension: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def faiss_reason(err: BaseException) -> str:
    """The useful tail of a FAISS C++ error ("Error in <signature> at <file>:<line>: Error: 'x' failed")."""
    text = " ".join(str(err).split())
    return text.rsplit("Error: ", 1)[-1] if "Error: " in text else text.rsplit(": ", 1)[-1] or type(err).__name__
