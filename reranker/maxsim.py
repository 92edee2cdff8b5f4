"""Second stage without a second model: ColBERT-style late interaction (MaxSim) over the bi-encoder's token embeddings.

score(q, d) = sum over query tokens i of max over passage tokens j of cos(q_i, d_j). Tokens are the bi-encoder's
contextual output vectors, L2-normalised. Padding is always excluded; so are the tokenizer's special tokens
([CLS], [SEP], ...) on both sides: they carry no term of their own, and in a mean-pooled bi-encoder that was never
trained for late interaction their vectors mostly add a near-constant offset. (A text with no other token, e.g. an
empty one, keeps its special tokens so it still has a score.) Passage vectors are rounded to float16 on every path,
so scores from a precomputed token store equal scores computed on the fly. :class:`QueryTokens` changes the query
side only: [CLS]/[SEP] summed too, and/or each query token's term weighted by its IDF in the collection.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from twostage.runtime.models import DEFAULT_BI_ENCODER, load_sentence_transformer, resolve_model

if TYPE_CHECKING:  # torch is imported where a model runs: scoring stored tokens on an exported backend needs none
    import torch

from .base import CandidateLike, Reranker

#: doc ids -> each passage's token vectors (float16 as :meth:`MaxSimReranker.passage_token_embeddings` makes them, or
#: float32 from a compressed store such as ``indexes.token_store.TokenStore.get_many``), None where none are stored;
#: called once per scoring pass (``PASS_PASSAGES``), so a store reads and decodes its candidates together
TokenStore = Callable[[Sequence[str]], "Sequence[np.ndarray | None]"]


def mapping_lookup(tokens: Mapping[str, np.ndarray]) -> TokenStore:
    """A :data:`TokenStore` over an in-memory ``doc_id -> vectors`` mapping (precomputed tokens no collection holds)."""
    return lambda doc_ids: [tokens.get(doc_id) for doc_id in doc_ids]


#: token ids -> one positive weight per id (``indexes.token_df.TokenDF.idf`` over a collection)
TokenWeights = Callable[[np.ndarray], np.ndarray]

_CHUNK = 256  # passages scored per padded matmul
#: the most distinct candidate passages one scoring pass holds (their token vectors as float32): many queries at a deep
#: candidate depth (a query file) are scored a few queries at a time, so memory stays flat in the number of queries
#: (225 queries x 300 candidates in one pass took 24 GB); a passage the queries of a pass share is read and scaled once
PASS_PASSAGES = 2048
WEIGHTINGS = ("idf",)


def _passes(keys: Sequence[Sequence[Hashable]], limit: int | None = None) -> list[slice]:
    """Consecutive query ranges whose candidates (``keys``: per query, one key per candidate passage) hold at most
    ``limit`` (``PASS_PASSAGES``) distinct passages; a query with more is a range alone."""
    limit = PASS_PASSAGES if limit is None else limit
    out: list[slice] = []
    start, seen = 0, set[Hashable]()
    for i, query_keys in enumerate(keys):
        grown = seen.union(query_keys)
        if i > start and len(grown) > limit:
            out.append(slice(start, i))
            start, grown = i, set(query_keys)
        seen = grown
    return [*out, slice(start, len(keys))]


@dataclass(frozen=True)
class QueryTokens:
    """Which query tokens MaxSim sums over and with what weight: ``weighting`` None (each counts 1) or "idf" (each
    content token's IDF in the collection, scaled to mean 1), and whether [CLS]/[SEP] count too (weight 1)."""

    weighting: str | None = None
    special: bool = False

    def __post_init__(self) -> None:
        if self.weighting is not None and self.weighting not in WEIGHTINGS:
            raise ValueError(f"query token weighting must be one of {', '.join(WEIGHTINGS)} (got {self.weighting!r})")

    @property
    def label(self) -> str:
        return "+".join(([self.weighting] if self.weighting else []) + (["special"] if self.special else [])) or "plain"

    @classmethod
    def parse(cls, spec: str | QueryTokens) -> QueryTokens:
        """``plain``, ``idf``, ``special`` or ``idf+special``; ValueError naming the spec."""
        if isinstance(spec, QueryTokens):
            return spec
        parts = {p for p in str(spec).strip().lower().split("+") if p}
        unknown = parts - {"plain", "special", *WEIGHTINGS}
        if unknown or not parts:
            raise ValueError(f"query tokens {spec!r}: expected plain, idf, special or idf+special")
        return cls(weighting="idf" if "idf" in parts else None, special="special" in parts)


class MaxSimReranker(Reranker):
    """Late-interaction reranker over a bi-encoder: a model name or directory (loaded here, offline-first), a
    ``SentenceTransformer``, or an object whose ``.model`` is one (the first stage's own ``BiEncoder``); optional
    ``token_store`` supplies precomputed passage token vectors by doc id."""

    name = "maxsim"

    def __init__(
        self,
        encoder: Any = DEFAULT_BI_ENCODER,
        *,
        token_store: TokenStore | None = None,
        batch_size: int = 32,
        device: str = "cpu",
    ):
        if isinstance(encoder, (str, os.PathLike)):  # a name: the model alone, no collection needed
            encoder = load_sentence_transformer(resolve_model(encoder, kind="bi-encoder"), device=device)
        #: the bi-encoder's exported model without torch (``runtime.light``): encodes queries, and the candidates
        #: whose tokens are not stored, in ``score_candidates``; None when the encoder has none
        self.light: Any = getattr(encoder, "light", None)
        if self.light is None:
            _sentence_transformer(encoder)  # a wrong encoder fails here, not at the first search
        self._encoder = encoder
        self.token_store = token_store
        self.batch_size = batch_size
        self.truncated = 0
        length = self.light.max_seq_length if self.light is not None else getattr(self.model, "max_seq_length", None)
        self.max_length = int(length or 512)
        self.query_tokens = QueryTokens()
        self.token_weights: TokenWeights | None = None

    def with_query_tokens(
        self, query_tokens: QueryTokens | str, token_weights: TokenWeights | None = None
    ) -> MaxSimReranker:
        """A copy (sharing the model) that sums over the query tokens ``query_tokens`` says; "idf" needs
        ``token_weights`` (token ids -> IDF)."""
        query_tokens = QueryTokens.parse(query_tokens)
        if query_tokens.weighting and token_weights is None:
            raise ValueError(
                f"query token weighting {query_tokens.weighting!r} needs the collection's token statistics"
            )
        other = copy.copy(self)
        other.query_tokens, other.token_weights = query_tokens, token_weights
        return other

    def query_token_counts(self, queries: Sequence[str]) -> list[int]:
        """How many query tokens MaxSim sums over for each query (their weights' total, as IDF weights average 1):
        what divides a raw MaxSim score into a mean best cosine, comparable across query lengths. Tokenises only."""
        if self.light is not None:
            prompt = self.light.prompts.get(self.light.default_prompt_name or "", "")
            rows = [e.ids for e in self.light.tokenizer.encode_batch([prompt + q for q in queries])]
            special = set(self.light.special_ids)
        else:
            prompt = self.model.prompts.get(self.model.default_prompt_name or "", "")
            tokenizer = self.model.tokenizer
            rows = tokenizer([prompt + q for q in queries], truncation=True, max_length=self.max_length)["input_ids"]
            special = set(tokenizer.all_special_ids)
        counts = []
        for ids in rows:
            content = sum(1 for i in ids if i not in special)
            counts.append(len(ids) if self.query_tokens.special or content == 0 else content)
        return counts

    @property
    def model(self) -> Any:
        """The bi-encoder's ``SentenceTransformer`` (loaded on first use where ``light`` serves the queries)."""
        return _sentence_transformer(self._encoder)

    @property
    def _special_ids(self) -> torch.Tensor:
        """The tokenizer's special token ids, which MaxSim leaves out."""
        import torch

        ids = self.light.special_ids if self.light is not None else self.model.tokenizer.all_special_ids
        return torch.tensor(sorted(set(ids)), dtype=torch.long)

    @property
    def device(self) -> torch.device:
        """Where scoring runs: the bi-encoder's device."""
        return self.model.device

    def passage_token_embeddings(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per passage, unit-length content-token vectors as float16 ``(n_tokens, dim)``: what a token store keeps."""
        vectors, _ = self._encode(texts)
        return [v.half().cpu().numpy() for v in vectors]

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """MaxSim of ``query`` against each text (encoded now), float32, in input order."""
        return self.score_batch([query], [texts])[0]

    def score_batch(self, queries: Sequence[str], texts_per_query: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Scores for several queries: all queries in one encode call, all passages in another."""
        if len(queries) != len(texts_per_query):
            raise ValueError("score_batch needs one list of texts per query")
        if len(passes := _passes(texts_per_query)) > 1:
            return [s for part in passes for s in self.score_batch(queries[part], texts_per_query[part])]
        query_vectors = self._encode_queries(queries)
        passages = self._passages([t for texts in texts_per_query for t in texts], None)
        out, start = [], 0
        for q, texts in zip(query_vectors, texts_per_query):
            out.append(_maxsim(q, passages[start : start + len(texts)]))
            start += len(texts)
        return out

    def score_candidates(
        self, queries: Sequence[str], candidates_per_query: Sequence[Sequence[CandidateLike]]
    ) -> list[np.ndarray]:
        """Like :meth:`score_batch`, but passages found in ``token_store`` (by doc id) are not re-encoded."""
        if len(queries) != len(candidates_per_query):
            raise ValueError("score_candidates needs one list of candidates per query")
        if len(passes := _passes([[c.doc_id for c in cs] for cs in candidates_per_query])) > 1:
            return [s for part in passes for s in self.score_candidates(queries[part], candidates_per_query[part])]
        flat = [c for candidates in candidates_per_query for c in candidates]
        light = self._score_light(queries, candidates_per_query, flat)
        if light is not None:
            return light
        query_vectors = self._encode_queries(queries)
        passages = self._passages([c.encoding_text for c in flat], [c.doc_id for c in flat])
        out, start = [], 0
        for q, candidates in zip(query_vectors, candidates_per_query):
            out.append(_maxsim(q, passages[start : start + len(candidates)]))
            start += len(candidates)
        return out

    def _score_light(
        self, queries: Sequence[str], candidates_per_query: Sequence[Sequence[CandidateLike]], flat: list[CandidateLike]
    ) -> list[np.ndarray] | None:
        """Scores in numpy on ``light`` (the bi-encoder's exported model): queries encoded now, passages read from
        ``token_store`` or, where it has none, encoded now as a store would keep them. The torch-free path of a
        search; None without ``light`` (the torch path scores instead)."""
        if self.light is None:
            return None
        stored: list[np.ndarray | None] = (
            self._lookup([c.doc_id for c in flat]) if self.token_store is not None else [None] * len(flat)
        )
        missing = [i for i, array in enumerate(stored) if array is None]
        for i, vectors in zip(missing, self._light_passages([flat[i].encoding_text for i in missing])):
            stored[i] = vectors
        units: dict[int, np.ndarray] = {}  # a passage several queries share (one stored array) is scaled once
        for array in stored:
            if id(array) not in units:
                units[id(array)] = _unit(np.asarray(array, dtype=np.float32))
        out, start = [], 0
        for query, candidates in zip(self._light_queries(queries), candidates_per_query):
            out.append(
                np.array(
                    [
                        float((units[id(p)] @ query.T).max(axis=0).sum())
                        for p in stored[start : start + len(candidates)]
                    ],
                    dtype=np.float32,
                )
            )
            start += len(candidates)
        return out

    def _light_passages(self, texts: Sequence[str]) -> list[np.ndarray]:
        """:meth:`passage_token_embeddings` in numpy on ``light``: content tokens, unit length, float16; texts that
        reach the length limit are counted in ``truncated``."""
        from twostage.runtime.light_encode import content_tokens

        special_ids = np.asarray(self.light.special_ids, dtype=np.int64)
        vectors = []
        for output in self.light.token_outputs(list(texts), "", self.batch_size) if texts else []:
            self.truncated += len(output.input_ids) >= self.max_length
            vectors.append(content_tokens(output.input_ids, output.token_embeddings, special_ids)[0])
        return vectors

    def _light_queries(self, queries: Sequence[str]) -> list[np.ndarray]:
        """:meth:`_encode_queries` in numpy on ``light``: the query tokens ``query_tokens`` selects, unit length,
        each scaled by its weight."""
        special_ids = np.asarray(self.light.special_ids, dtype=np.int64)
        prompt = self.light.prompts.get(self.light.default_prompt_name or "", "")  # what ``model.encode`` prepends
        vectors = []
        for output in self.light.token_outputs(queries, prompt, self.batch_size, remember=True):  # one pass per query
            special = np.isin(output.input_ids, special_ids)
            keep = np.ones_like(special) if self.query_tokens.special or special.all() else ~special
            tokens = _unit(output.token_embeddings[keep])
            content = ~special[keep]
            if self.query_tokens.weighting and content.any():
                idf = np.asarray(self.token_weights(output.input_ids[keep][content]), dtype=np.float32)  # type: ignore[misc]
                weights = np.ones(len(tokens), dtype=np.float32)
                weights[content] = idf / idf.mean() if float(idf.mean()) > 0 else 1.0
                tokens = tokens * weights[:, None]
            vectors.append(tokens)
        return vectors

    def _passages(self, texts: list[str], doc_ids: list[str] | None) -> list[torch.Tensor]:
        """Passage token matrices (float32 from float16), from the store when it has them, else encoded in one batch."""
        import torch

        stored: list[np.ndarray | None] = [None] * len(texts)
        if self.token_store is not None and doc_ids is not None:
            stored = self._lookup(doc_ids)
        found = [i for i, array in enumerate(stored) if array is not None]
        missing = [i for i, array in enumerate(stored) if array is None]
        passages: list[torch.Tensor | None] = [None] * len(texts)
        if found:  # one conversion for all stored passages, each distinct array (several queries may share it) once
            distinct = {id(stored[i]): np.asarray(stored[i]) for i in found}
            flat = torch.from_numpy(np.concatenate(list(distinct.values())))
            sizes = [len(array) for array in distinct.values()]
            converted = dict(zip(distinct, torch.split(_from_half(flat, self.device), sizes)))
            for i in found:
                passages[i] = converted[id(stored[i])]
        if missing:
            vectors, hit_limit = self._encode([texts[i] for i in missing])
            self.truncated += hit_limit
            for i, v in zip(missing, vectors):
                passages[i] = _from_half(v.half(), self.device)
        return passages

    def _lookup(self, doc_ids: Sequence[str]) -> list[np.ndarray | None]:
        """The store's vectors for each of ``doc_ids``, in one call; None (encode instead) where absent or empty."""
        arrays = list(self.token_store(list(doc_ids)))  # type: ignore[misc]
        return [None if array is None or len(array) == 0 else array for array in arrays]

    def _encode_queries(self, queries: Sequence[str]) -> list[torch.Tensor]:
        """Query token vectors, each scaled by its weight (sum_i w_i max_j q_i.d_j = sum_i max_j (w_i q_i).d_j)."""
        import torch
        import torch.nn.functional as F

        if self.query_tokens == QueryTokens():
            return self._encode(queries)[0]
        outputs = self.model.encode(
            list(queries), output_value=None, batch_size=self.batch_size, show_progress_bar=False
        )
        vectors = []
        for out in outputs:
            attended = out["attention_mask"].bool()
            special = torch.isin(out["input_ids"], self._special_ids.to(out["input_ids"].device))
            keep = attended if self.query_tokens.special or not (attended & ~special).any() else attended & ~special
            tokens = F.normalize(out["token_embeddings"][keep].float(), dim=-1)
            content = ~special[keep]
            if self.query_tokens.weighting and content.any():
                ids = out["input_ids"][keep][content].cpu().numpy()
                weights = torch.ones(len(tokens), dtype=tokens.dtype, device=tokens.device)
                idf = torch.as_tensor(np.asarray(self.token_weights(ids), dtype=np.float32))  # type: ignore[misc]
                weights[content] = (idf / idf.mean()).to(tokens.device) if float(idf.mean()) > 0 else 1.0
                tokens = tokens * weights[:, None]
            vectors.append(tokens)
        return vectors

    def _encode(self, texts: Sequence[str]) -> tuple[list[torch.Tensor], int]:
        """Unit-length content-token vectors (float32) per text, and how many texts reached the length limit."""
        if not texts:
            return [], 0
        # on a GPU all candidates of a query are one forward pass; on the CPU batches of batch_size
        size = len(texts) if self.device.type == "cuda" else self.batch_size
        outputs = self.model.encode(list(texts), output_value=None, batch_size=size, show_progress_bar=False)
        return _content_tokens(outputs, self._special_ids, self.max_length)


@dataclass
class StoreEncoding:
    """What indexing with a token store needs per passage, in input order: the document vector, the MaxSim token
    vectors (float16), the content token ids (for the collection's token statistics) and how many were cut."""

    embeddings: np.ndarray
    tokens: list[np.ndarray]
    token_ids: list[np.ndarray] | None
    truncated: int


def encode_for_store(encoder: Any, texts: Sequence[str], *, token_ids: bool = True) -> StoreEncoding:
    """Document vectors and MaxSim tokens of ``texts`` from one forward pass (``token_ids`` too, when asked), on the
    collection's ``BiEncoder``: on an exported backend through its torch-free model (``encoder.light``), so the
    tokens and the vector come from the backend the collection records; else through sentence-transformers."""
    texts = list(texts)
    light = getattr(encoder, "light", None)
    if light is not None:
        from twostage.runtime.light_encode import encode_passages

        encoded = encode_passages(
            light,
            texts,
            prompt=encoder.document_prompt,
            batch_size=encoder.batch_size,
            normalize=encoder.normalize,
            tokens=True,
        )
        ids = encoded.token_ids if token_ids else None
        return StoreEncoding(encoded.vectors, encoded.tokens or [], ids, len(encoded.cut))
    embeddings, tokens = encode_with_tokens(encoder, texts)
    ids = content_token_ids(encoder, texts) if token_ids else None
    return StoreEncoding(embeddings, tokens, ids, encoder.count_truncated(texts))


def encode_with_tokens(encoder: Any, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Document vectors as ``encoder.encode_documents`` makes them, and the passages' MaxSim token vectors (float16),
    from one forward pass: what indexing with a token store needs. ``encoder`` is the collection's ``BiEncoder``.

    A model with a document prompt takes two passes, as MaxSim encodes passages without the prompt. On an exported
    backend this is :func:`encode_for_store`'s torch-free pass."""
    texts = list(texts)
    if getattr(encoder, "light", None) is not None:
        encoded = encode_for_store(encoder, texts, token_ids=False)
        return encoded.embeddings, encoded.tokens
    import torch
    import torch.nn.functional as F

    reranker = MaxSimReranker(encoder, batch_size=encoder.batch_size)
    if encoder.document_prompt:
        return encoder.encode_documents(texts).embeddings, reranker.passage_token_embeddings(texts)
    if not texts:
        return np.empty((0, encoder.dimension), dtype=np.float32), []
    outputs = reranker.model.encode(texts, output_value=None, batch_size=encoder.batch_size, show_progress_bar=False)
    vectors = torch.stack([out["sentence_embedding"].float() for out in outputs])
    if encoder.normalize:
        vectors = F.normalize(vectors, dim=-1)
    tokens, _ = _content_tokens(outputs, reranker._special_ids, reranker.max_length)
    return vectors.cpu().numpy().astype(np.float32), [t.half().cpu().numpy() for t in tokens]


def content_token_ids(encoder: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Per text, the token ids MaxSim keeps for it (truncated as encoding truncates, special tokens dropped): what
    a collection counts for its token document frequencies. Tokenises only; no forward pass."""
    light = getattr(encoder, "light", None)
    if light is not None:
        from twostage.runtime.light_encode import content_token_ids as light_token_ids

        return light_token_ids(light, texts)
    model = _sentence_transformer(encoder)
    limit = int(getattr(model, "max_seq_length", None) or 512)
    special = set(model.tokenizer.all_special_ids)
    ids = model.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"] if texts else []
    return [np.array([t for t in row if t not in special], dtype=np.int64) for row in ids]


def _content_tokens(outputs: list[dict], special_ids: torch.Tensor, max_length: int) -> tuple[list[torch.Tensor], int]:
    """Unit-length content-token vectors (float32) per ``encode(output_value=None)`` output, and how many texts
    reached the length limit."""
    import torch
    import torch.nn.functional as F

    vectors, hit_limit = [], 0
    for out in outputs:
        attended = out["attention_mask"].bool()
        keep = attended & ~torch.isin(out["input_ids"], special_ids.to(out["input_ids"].device))
        if not keep.any():
            keep = attended
        hit_limit += int(attended.sum()) >= max_length
        vectors.append(F.normalize(out["token_embeddings"][keep].float(), dim=-1))
    return vectors, hit_limit


def _from_half(vectors: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float16 (or dequantized float32) token vectors -> float32, re-normalised: the path stored and fresh passages take."""
    import torch
    import torch.nn.functional as F

    return F.normalize(vectors.to(device=device, dtype=torch.float32), dim=-1)


def _maxsim(query: torch.Tensor, passages: list[torch.Tensor]) -> np.ndarray:
    """sum_i max_j q_i . d_j for one query ``(m, dim)`` against each passage ``(n_k, dim)``; padding never wins."""
    import torch

    scores = np.zeros(len(passages), dtype=np.float32)
    # on a GPU the whole candidate depth is one padded matmul; on the CPU chunks keep the padded block in cache
    step = max(len(passages), 1) if passages and passages[0].is_cuda else _CHUNK
    with torch.inference_mode():
        for start in range(0, len(passages), step):
            part = passages[start : start + step]
            docs = torch.nn.utils.rnn.pad_sequence(part, batch_first=True)  # (p, t, dim)
            lengths = torch.tensor([len(d) for d in part], device=docs.device)
            pad = torch.arange(docs.shape[1], device=docs.device)[None, :] >= lengths[:, None]  # (p, t)
            sims = torch.matmul(docs, query.to(docs.device).T)  # (p, t, m)
            sims.masked_fill_(pad[:, :, None], float("-inf"))
            scores[start : start + len(part)] = sims.max(dim=1).values.sum(dim=1).cpu().numpy()
    return scores


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (``F.normalize`` in numpy)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _sentence_transformer(encoder: Any) -> Any:
    """The ``SentenceTransformer`` inside ``encoder`` (itself, or its ``.model``)."""
    from sentence_transformers import SentenceTransformer

    if isinstance(encoder, SentenceTransformer):
        return encoder
    inner = getattr(encoder, "model", None)
    if isinstance(inner, SentenceTransformer):
        return inner
    kind = type(encoder).__name__
    raise TypeError(f"MaxSimReranker needs a SentenceTransformer or an object whose .model is one, got {kind}")
