"""The first-stage encoder: a SentenceTransformer resolved offline-first, with an embedding cache and truncation counts."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

import numpy as np

from twostage.indexes.documents import text_hash
from twostage.retriever.cache import EmbeddingCache
from twostage.runtime import encode as runtime_encode
from twostage.runtime import light_encode
from twostage.runtime.autotune import stage_backend
from twostage.runtime.backends import Runtime, configure_threads, resolve_backend, use_backend
from twostage.runtime.models import (
    DEFAULT_BI_ENCODER,
    ModelLoadError,
    ResolvedModel,
    load_sentence_transformer,
    model_fingerprint,
    resolve_model,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from twostage.runtime.device_encode import DeviceEncoder, DeviceOptions
    from twostage.runtime.light import LightEncoder

# Texts encoded per call to SentenceTransformer.encode, in batches: the unit of cache writes and progress updates.
_CHUNK_BATCHES = 16
_TOKENIZE_CHUNK = 2048


@dataclass
class EncodeResult:
    """Document embeddings in input order plus how many inputs were truncated and how many came from the cache."""

    embeddings: np.ndarray  # float32, shape (n, dimension)
    truncated: int
    cache_hits: int


def _device_encoder(
    model: SentenceTransformer, device: str, options: DeviceOptions | None, backend: str, prompt: str
) -> DeviceEncoder | None:
    """The device encode path for this model, when it applies: torch backend, a GPU (or explicit ``options``), a
    transformer + pooling model and a fast tokenizer; else None (the other paths)."""
    if backend != "torch" or (options is None and not str(device).startswith("cuda")):
        return None
    if not runtime_encode.supports(model, prompt) or not getattr(model.tokenizer, "is_fast", False):
        return None
    from twostage.runtime.device_encode import DeviceEncoder  # imports torch: only where a model runs on torch

    return DeviceEncoder(model, device, options)


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    """A list copy of ``texts``, refusing a bare string (a classic one-character-per-item bug)."""
    if isinstance(texts, str):
        raise TypeError(f"{what} takes a sequence of strings, not a single string")
    return list(texts)


class BiEncoder:
    """Sentence-transformers bi-encoder for queries and documents; documents go through the embedding cache."""

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] = DEFAULT_BI_ENCODER,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        normalize: bool = True,
        cache: EmbeddingCache | None | Literal["default"] = "default",
        show_progress: bool = False,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        backend: str | None = "torch",
        threads: int | None = None,
        device_options: DeviceOptions | None = None,
    ):
        resolve_backend(backend, device)  # a bad name or placement fails before the model is looked for
        configure_threads(threads)
        resolved = resolve_model(model_name_or_path, kind="bi-encoder")
        self.name = resolved.name
        self.source = resolved.source
        self.origin = resolved.origin
        self.device = device
        self._model: SentenceTransformer | None = None
        self.runtime: Runtime | None = None
        local_dir = os.path.isdir(resolved.source)
        self.fingerprint = model_fingerprint(resolved.source) if local_dir else ""
        #: the concrete backend; "auto" on the CPU is this machine's measured choice (``runtime.autotune``)
        self.backend = stage_backend(backend, device, "bi-encoder", self.fingerprint)
        #: queries (and MaxSim's query tokens) straight from a cached export, without torch or sentence-transformers;
        #: None where that does not apply (torch backend, no export yet, an unusual model): ``model`` is loaded now
        self.light: LightEncoder | None = None
        if local_dir and self.backend != "torch":
            from twostage.runtime.light import load_light

            self.light = load_light(resolved.source, self.backend, self.fingerprint, export=True)
        if self.light is not None:
            self.runtime = self.light.runtime
            dimension: int | None = self.light.dimension
            prompts = self.light.prompts
        else:
            dimension = self.model.get_embedding_dimension()
            prompts = self.model.prompts
        if not dimension:
            raise ModelLoadError(f"bi-encoder {resolved.name!r} does not produce fixed-size sentence embeddings")
        self.dimension: int = int(dimension)
        self.batch_size = batch_size
        self.normalize = normalize
        self.show_progress = show_progress
        self.cache: EmbeddingCache | None = EmbeddingCache() if cache == "default" else cache
        # Same fallbacks as SentenceTransformer.encode_query / encode_document, made explicit so they key the cache.
        self.query_prompt: str = query_prompt if query_prompt is not None else prompts.get("query", "")
        doc_default = next((prompts[k] for k in ("document", "passage", "corpus") if k in prompts), "")
        self.document_prompt: str = document_prompt if document_prompt is not None else doc_default
        #: documents through ``runtime.device_encode`` (bucketed, bf16, workers tokenising ahead): on a GPU, or on
        #: the CPU when ``device_options`` are given; None = sentence-transformers' own loop or the exported runtime
        self.device_encoder = (
            None
            if self.light is not None  # an exported backend: never the torch device path
            else _device_encoder(self.model, device, device_options, self.backend, self.document_prompt)
        )

    def __repr__(self) -> str:
        return (
            f"BiEncoder({self.name!r}, origin={self.origin!r}, dimension={self.dimension}, device={self.device!r}, "
            f"backend={self.backend_tag!r})"
        )

    @property
    def backend_tag(self) -> str:
        """The backend with its compute precision (``torch``, ``onnx-int8/int8``, ``openvino/bf16``, ...)."""
        if self.device_encoder is not None:
            return f"torch/{self.device_encoder.precision}"
        return self.runtime.tag if self.runtime is not None else "torch"

    @property
    def model(self) -> SentenceTransformer:
        """The SentenceTransformer (on the chosen backend), loaded on first use where ``light`` serves queries."""
        if self._model is None:
            model = load_sentence_transformer(ResolvedModel(self.source, self.origin, self.name), device=self.device)
            self.fingerprint = self.fingerprint or model_fingerprint(model)
            if self.light is not None:
                model.max_seq_length = self.light.max_seq_length
            # Non-torch backends swap the transformer for an exported copy; pooling, prompts and normalising stay ST's.
            self.runtime = use_backend(model, self.backend, self.fingerprint, self.runtime)
            configure_threads()  # torch is imported now
            self._model = model
        return self._model

    @property
    def max_seq_length(self) -> int | None:
        """Tokens per input the model sees; longer inputs are truncated. Settable."""
        if self._model is None and self.light is not None:
            return self.light.max_seq_length
        return self.model.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if self.light is not None:
            self.light.set_max_seq_length(value)
        if self._model is not None or self.light is None:
            self.model.max_seq_length = value

    @property
    def cache_key(self) -> str:
        """Cache namespace for document vectors: the model fingerprint plus every setting that changes a vector."""
        settings = f"{self.fingerprint}|normalize={self.normalize}|prompt={self.document_prompt!r}|max_len={self.max_seq_length}"
        if self.runtime is not None:  # each backend/precision caches its own vectors; torch keeps its old keys
            settings += f"|backend={self.runtime.tag}"
        elif self.device_encoder is not None and self.device_encoder.precision != "fp32":  # bf16/fp16 vectors
            settings += f"|backend={self.backend_tag}"
        return hashlib.sha256(settings.encode("utf-8")).hexdigest()

    def count_truncated(self, texts: Sequence[str], prompt: str | None = None) -> int:
        """How many texts (with ``prompt`` prepended) tokenise to more than ``max_seq_length`` tokens."""
        limit = self.max_seq_length
        if not limit or not texts:
            return 0
        prefix = self.document_prompt if prompt is None else prompt
        if self.light is not None:  # the torch-free tokenizer says where it cut
            return sum(
                light_encode.count_cut(self.light, texts[i : i + _TOKENIZE_CHUNK], prefix)
                for i in range(0, len(texts), _TOKENIZE_CHUNK)
            )
        tokenizer = self.model.tokenizer
        total = 0
        for start in range(0, len(texts), _TOKENIZE_CHUNK):
            chunk = [prefix + t for t in texts[start : start + _TOKENIZE_CHUNK]]
            ids = tokenizer(
                chunk,
                add_special_tokens=True,
                truncation=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )["input_ids"]
            total += sum(len(x) > limit for x in ids)
        return total

    def through_cache(self, texts: Sequence[str], embeddings: np.ndarray) -> int:
        """Pass document vectors computed elsewhere (indexing with stored tokens, which runs every passage through the
        model for its token vectors anyway) through the embedding cache: rows it holds take the cached vector, so a
        collection gets the same vectors with or without tokens, and the others are written. Returns the hits."""
        if self.cache is None or not len(texts):
            return 0
        hashes = [text_hash(t) for t in texts]
        key = self.cache_key
        cached = self.cache.get_many(key, hashes)
        missing: dict[str, int] = {}
        for i, h in enumerate(hashes):
            vector = cached.get(h)
            if vector is not None and vector.shape == (self.dimension,):
                embeddings[i] = vector
            else:
                missing.setdefault(h, i)
        self.cache.put_many(key, list(missing), embeddings[list(missing.values())])
        return len(texts) - sum(h in missing for h in hashes)

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool | None = None) -> EncodeResult:
        """Embed documents: cache hits are reused, misses are encoded longest-first in chunks and written back."""
        texts = _check_texts(texts, "encode_documents")
        show = self.show_progress if show_progress is None else show_progress
        embeddings = np.empty((len(texts), self.dimension), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        key = self.cache_key
        cached = self.cache.get_many(key, hashes) if self.cache is not None else {}
        hits = 0
        first_index: dict[str, int] = {}  # one encode per distinct missing text
        for i, h in enumerate(hashes):
            vector = cached.get(h)
            if vector is not None and vector.shape == (self.dimension,):
                embeddings[i] = vector
                hits += 1
            else:
                first_index.setdefault(h, i)

        todo = sorted(first_index.values(), key=lambda i: -len(texts[i]))  # longest first, as ST sorts
        cut = self._encode_in_chunks(texts, hashes, todo, embeddings, key, show)
        for i, h in enumerate(hashes):  # duplicates of freshly encoded texts
            if h in first_index and first_index[h] != i:
                embeddings[i] = embeddings[first_index[h]]
        if cut is None:
            truncated = self.count_truncated(texts)
        else:  # encoded texts were counted while tokenising; only cache hits need a tokeniser pass
            cut_hashes = {hashes[i] for i in cut}
            hit_texts = [t for t, h in zip(texts, hashes) if h not in first_index]
            truncated = sum(h in cut_hashes for h in hashes) + self.count_truncated(hit_texts)
        return EncodeResult(embeddings=embeddings, truncated=truncated, cache_hits=hits)

    def _encode_in_chunks(
        self,
        texts: list[str],
        hashes: list[str],
        todo: list[int],
        out: np.ndarray,
        key: str,
        show: bool,
    ) -> list[int] | None:
        """Encode ``texts[todo]`` (already length-sorted) chunk by chunk into ``out``, caching each chunk.

        On an exported runtime (and a transformer + pooling model) texts skip ST's loop: see ``runtime_encode``; the
        positions it found cut at the length limit are returned. None means "not counted" (the torch path)."""
        light = self.light
        fast = light is None and self.runtime is not None and runtime_encode.supports(self.model, self.document_prompt)
        device = self.device_encoder
        counted: list[int] = []
        cut = counted if light is not None or fast or device is not None else None
        if not todo:
            return cut
        from tqdm.auto import tqdm

        # the device path batches by memory and windows its own input: one call, so its batches can be large
        chunk_size = max(len(todo), 1) if device is not None else self.batch_size * _CHUNK_BATCHES
        with tqdm(total=len(todo), desc="Encoding documents", unit="doc", disable=not show) as bar:
            for start in range(0, len(todo), chunk_size):
                idx = todo[start : start + chunk_size]
                if light is not None:  # the exported model without torch or sentence-transformers
                    encoded = light_encode.encode_passages(
                        light,
                        [texts[i] for i in idx],
                        prompt=self.document_prompt,
                        batch_size=self.batch_size,
                        normalize=self.normalize,
                    )
                    vectors = encoded.vectors
                    counted.extend(idx[j] for j in encoded.cut)
                elif device is not None:
                    vectors, chunk_cut = device.encode(
                        [texts[i] for i in idx], prompt=self.document_prompt, normalize=self.normalize
                    )
                    counted.extend(idx[j] for j in chunk_cut)
                elif fast:
                    vectors, chunk_cut = runtime_encode.encode(
                        self.model,
                        cast(Runtime, self.runtime),  # `fast` means there is one
                        [texts[i] for i in idx],
                        prompt=self.document_prompt,
                        batch_size=self.batch_size,
                        normalize=self.normalize,
                    )
                    counted.extend(idx[j] for j in chunk_cut)
                else:
                    # SentenceTransformer re-sorts each call by length; the chunk is already sorted: a no-op order.
                    vectors = self.model.encode_document(
                        [texts[i] for i in idx],
                        prompt=self.document_prompt,
                        batch_size=self.batch_size,
                        normalize_embeddings=self.normalize,
                        show_progress_bar=False,
                        convert_to_numpy=True,
                    )
                vectors = np.asarray(vectors, dtype=np.float32)
                out[idx] = vectors
                if self.cache is not None:
                    self.cache.put_many(key, [hashes[i] for i in idx], vectors)
                bar.update(len(idx))
        return cut

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Embed queries (with ``query_prompt``) as a float32 (n, dimension) array; never cached."""
        queries = _check_texts(queries, "encode_queries")
        if not queries:
            return np.empty((0, self.dimension), dtype=np.float32)
        if self.light is not None:
            # remembered: MaxSim asks the same query's token vectors next (runtime.light.RecentOutputs)
            return self.light.encode(queries, self.query_prompt, self.batch_size, self.normalize, remember=True)
        vectors = self.model.encode_query(
            queries,
            prompt=self.query_prompt,
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)
