"""Lexical first stage: BM25 over bm25s (Lucene scoring, Anserini's k1=0.9, b=0.4), with save/load."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from twostage.indexes.documents import Document
from twostage.retriever.fusion import trec_order

_META_FILE = "twostage_bm25.json"


def _make_stemmer(language: str | None) -> Any:
    """A PyStemmer stemmer for ``language``, or None when no stemming is wanted."""
    if language is None:
        return None
    try:
        import Stemmer
    except ImportError:
        raise ImportError(f"BM25 stemming ({language!r}) needs PyStemmer: pip install PyStemmer") from None
    return Stemmer.Stemmer(language)


def _auto_stemmer() -> str | None:
    """English stemming when PyStemmer is installed, else none."""
    try:
        import Stemmer  # noqa: F401
    except ImportError:
        return None
    return "english"


def _ids_and_texts(docs: Iterable[Document] | tuple[Sequence[str], Sequence[str]]) -> tuple[list[str], list[str]]:
    """Accept Documents (title + text, as the encoders see them) or an (ids, texts) pair."""
    if isinstance(docs, tuple) and len(docs) == 2 and not isinstance(docs[0], Document):
        ids, texts = [str(i) for i in docs[0]], list(docs[1])
        if len(ids) != len(texts):
            raise ValueError(f"BM25Retriever.build: {len(ids)} ids but {len(texts)} texts")
        return ids, texts
    ids, texts = [], []
    for doc in docs:
        ids.append(doc.id)
        texts.append(doc.text_for_encoding())
    return ids, texts


class BM25Retriever:
    """BM25 ranking of a fixed corpus; build with ``build`` or ``load``, query with ``search``."""

    def __init__(self, model: Any, doc_ids: list[str], *, stemmer: str | None, stopwords: str | list[str] | None):
        self.model = model  # the bm25s.BM25 object
        self.doc_ids = doc_ids
        self.stemmer = stemmer
        self.stopwords = stopwords
        self._stemmer = _make_stemmer(stemmer)

    def __len__(self) -> int:
        return len(self.doc_ids)

    @classmethod
    def build(
        cls,
        docs: Iterable[Document] | tuple[Sequence[str], Sequence[str]],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        stemmer: str | None = "auto",
        stopwords: str | list[str] | None = "en",
        show_progress: bool = False,
    ) -> BM25Retriever:
        """Index documents; ``stemmer="auto"`` means English if PyStemmer is installed, else no stemming."""
        import bm25s

        ids, texts = _ids_and_texts(docs)
        if not ids:
            raise ValueError("BM25Retriever.build: the corpus is empty")
        language = _auto_stemmer() if stemmer == "auto" else stemmer
        tokens = bm25s.tokenize(
            texts, stopwords=stopwords, stemmer=_make_stemmer(language), show_progress=show_progress
        )
        model = bm25s.BM25(k1=k1, b=b, method="lucene")
        model.index(tokens, show_progress=show_progress)
        return cls(model, ids, stemmer=language, stopwords=stopwords)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` (doc_id, score) per query, best first; documents sharing no term with the query are left out.

        Equal scores are ordered as trec_eval orders them (doc_id descending), so results are deterministic.
        """
        import bm25s

        if isinstance(queries, str):
            raise TypeError("search takes a sequence of query strings, not a single string")
        queries = list(queries)
        k = min(k, len(self.doc_ids))
        if not queries or k <= 0:
            return [[] for _ in queries]
        tokens = bm25s.tokenize(
            queries, stopwords=self.stopwords, stemmer=self._stemmer, return_ids=False, show_progress=False
        )
        indices, scores = self.model.retrieve(tokens, k=k, show_progress=False)
        results = []
        for row_ids, row_scores in zip(indices, scores):
            hits = {self.doc_ids[int(i)]: float(s) for i, s in zip(row_ids, row_scores) if s > 0}
            results.append(trec_order(hits))
        return results

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the bm25s index plus doc ids and tokenisation settings to ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(str(path), show_progress=False)
        meta = {"format": 1, "doc_ids": self.doc_ids, "stemmer": self.stemmer, "stopwords": self.stopwords}
        (path / _META_FILE).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, mmap: bool = False) -> BM25Retriever:
        """Reopen an index written by ``save``; ``mmap`` keeps the score matrix on disk."""
        import bm25s

        path = Path(directory)
        meta_path = path / _META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {path} is not a saved BM25Retriever")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        model = bm25s.BM25.load(str(path), mmap=mmap, show_progress=False)
        return cls(model, meta["doc_ids"], stemmer=meta["stemmer"], stopwords=meta["stopwords"])
