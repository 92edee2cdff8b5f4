"""Splitting documents into passages that fit the bi-encoder's window, counted in the model's own tokens.

A document that fits (with its title) stays one passage. A longer one is tokenised once (a fast tokenizer gives each
token's character offsets) and cut into whole paragraphs (blocks between blank lines): a paragraph is a passage of its
own once it holds a third of ``PARAGRAPH_SHARE`` of the window (half: 128 tokens for all-MiniLM-L6-v2), shorter ones
are joined until they do (``PACKING``); a paragraph longer than half the window stays whole within the window, and a
section start always begins a new passage. A paragraph longer than the window is cut greedily: each
passage takes as many tokens as the window (or a smaller ``passage_tokens``) leaves after the special tokens, the
document prompt and its context (title and heading path), ending at the strongest boundary in its last two thirds: a
line, a sentence, a clause, a space between words; never inside a word unless one word alone overflows the window.
Only such a cut overlaps: the next passage starts up to ``overlap`` tokens back, at the strongest boundary there. Why
our own rather than a library (docs/guides/passages.md): it reads each document's tokens once and is several times
faster than semantic-text-splitter, which re-tokenises while it searches, and the two rank alike on
benchmarks/bench_documents.py.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twostage.indexes.documents import Document, Passage

#: tokens a passage repeats from the end of the one before it: chosen on benchmarks/bench_documents.py (0 vs 32 vs 64)
DEFAULT_OVERLAP = 32
#: the most model tokens in a passage of a document cut because it overflows the window (None: the window). A hard 128
#: cap was measured against the window on benchmarks/bench_documents.py: better on the msmarco-dl20 set, worse on the
#: cacm one, whose paragraphs it cuts mid-text (docs/benchmarks/documents.md)
PASSAGE_TOKENS: int | None = None
#: a cut document's passages are whole paragraphs of at most this share of the window (``PACKING`` says how many; a
#: longer paragraph that fits the window stays whole; one that does not is cut inside); None: passages fill the window.
#: Measured (with "fill" packing) against filling the window on the first two long-document sets of
#: bench_documents.py: +0.132 nDCG@10 on msmarco-dl20's, -0.017 on cacm's (dense + MaxSim, the default search)
PARAGRAPH_SHARE: float | None = 0.5
#: how whole paragraphs make passages: "fewest" closes a passage as soon as it holds a third of ``PARAGRAPH_SHARE``
#: (``MIN_FILL``), so a paragraph of that size is a passage of its own and only short ones are joined; "fill" packs as
#: many as ``PARAGRAPH_SHARE`` holds. Measured on the four long-document sets of bench_documents.py (dense + MaxSim,
#: the default search): "fewest" +0.040 nDCG@10 on msmarco-dl20's, +0.012 cacm, +0.002 cranfield, -0.003 cisi
PACKING = "fewest"
PACKINGS = ("fewest", "fill")
#: a paragraph break: the strength at which a cut takes whole paragraphs and repeats nothing of the one before
PARAGRAPH = 4
#: a passage ends at a boundary in its window's last two thirds (so no passage is cut short by a weak boundary)
MIN_FILL = 1 / 3
#: boundaries, strongest first: (priority, pattern whose match end is a place to cut)
BOUNDARIES = (
    (4, re.compile(r"\n[ \t]*\n\s*")),  # a paragraph break
    (3, re.compile(r"\n\s*")),  # a line break
    (2, re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")),  # a sentence end
    (1, re.compile(r"[;:,]\s+")),  # a clause
    (0, re.compile(r"\s+")),  # a space between words
)
#: a section (heading) start outranks every other boundary
SECTION = 5
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)  # fenced code: its "#" lines are comments


@dataclass(frozen=True)
class _Section:
    level: int
    title: str
    start: int
    end: int


class Splitter:
    """Keeps a document that fits ``window`` model tokens whole, and cuts a longer one into passages of at most
    ``passage_tokens`` (or ``window``, if fewer) model tokens, special tokens, prompt and context included."""

    def __init__(
        self,
        tokenizer: Any,
        window: int,
        *,
        overlap: int = DEFAULT_OVERLAP,
        prompt: str = "",
        passage_tokens: int | None = PASSAGE_TOKENS,
        paragraph_share: float | None = PARAGRAPH_SHARE,
        packing: str = PACKING,
    ):
        """``tokenizer``: a ``tokenizers.Tokenizer`` (copied: truncation and padding are turned off in the copy)."""
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.window = int(window)
        self.size = min(self.window, int(passage_tokens or self.window))  # a cut document's passages
        self.paragraph_size = int(self.size * paragraph_share) if paragraph_share else None
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, not {packing!r}")
        self.packing = packing
        self.overlap = max(0, int(overlap))
        self.prompt = prompt
        self._fixed = len(self.tokenizer.encode(prompt).ids)  # special tokens and the document prompt
        self._context_sizes: dict[str | None, int] = {}

    def split(self, doc: Document) -> list[Passage]:
        return self.split_many([doc])[0]

    def split_many(self, docs: Sequence[Document]) -> list[list[Passage]]:
        """Each document's passages, in order; a document that fits is one passage spanning its whole text."""
        bare = self.tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
        out: list[list[Passage]] = []
        for doc, encoding in zip(docs, bare):
            size = len(encoding.ids) + self._fixed + self._context_size(doc.title)
            if size > self.window - 2 and (size > self.window + 8 or not self._fits(doc)):
                out.append(self._cut(doc, encoding.offsets))
            else:
                out.append([Passage(0, len(doc.text), doc.text, page=_page_at(doc, 0))])
        return out

    def _fits(self, doc: Document) -> bool:
        """Whether the document as the encoders read it (prompt, title, text) fits the window: exact, for the few
        near the limit, where joining title and text can tokenise a little differently than each alone."""
        return len(self.tokenizer.encode(self.prompt + doc.text_for_encoding()).ids) <= self.window

    def _context_size(self, context: str | None) -> int:
        if context not in self._context_sizes:
            self._context_sizes[context] = (
                len(self.tokenizer.encode(f"{context}. ", add_special_tokens=False).ids) if context else 0
            )
        return self._context_sizes[context]

    def _cut(self, doc: Document, offsets: list[tuple[int, int]]) -> list[Passage]:
        text = doc.text
        starts = [start for start, _ in offsets]
        n = len(offsets)
        sections = _sections(doc)
        priority = _boundaries(text, starts, sections, getattr(doc, "pages", None) or [])
        passages: list[Passage] = []
        first = 0
        while first < n:
            headings = _heading_path(sections, starts[first])
            context = Passage(0, 0, "", headings=headings).context(doc.title)
            if self._context_size(context) > self.size // 4:  # a long heading path: the title alone
                headings, context = [], doc.title
            taken = self._fixed + self._context_size(context) + 2  # 2: joins re-tokenised
            budget = max(16, self.size - taken)
            last = min(n, first + budget)  # exclusive
            low = first + max(1, int(budget * MIN_FILL))
            window = priority[low + 1 : last + 1] if last < n else priority[low + 1 : n]
            whole = self._paragraphs_end(priority, first, last, n, taken)
            if whole is not None:
                last = whole
            elif window.size and (last < n and window.max() >= 0 or window.max() == SECTION):  # the tail: at sections
                last = low + 1 + int(np.flatnonzero(window == window.max())[-1])
            start, end = starts[first], offsets[last - 1][1]
            passages.append(Passage(start, end, text[start:end], page=_page_at(doc, start), headings=headings))
            if last >= n:
                break
            following = last
            if self.overlap and priority[last] < PARAGRAPH:  # a new paragraph or section starts afresh
                back = priority[max(first + 1, last - self.overlap) : last]
                if back.size and back.max() >= 0:
                    following = max(first + 1, last - self.overlap) + int(np.flatnonzero(back == back.max())[0])
            first = following
        return passages

    def _paragraphs_end(self, priority: np.ndarray, first: int, last: int, n: int, taken: int) -> int | None:
        """Where a passage of whole paragraphs from token ``first`` ends (None: no paragraph ends by ``last``, the
        window's end): among the runs of paragraphs that fit ``paragraph_size`` and fill a third of it, the shortest
        ("fewest" packing) or the longest ("fill"); else after the first paragraph (longer, but within the window);
        never across a section start; a short run takes the next paragraph too."""
        if self.paragraph_size is None:
            return None
        ends = (first + 1 + np.flatnonzero(priority[first + 1 : last + 1] >= PARAGRAPH)).tolist()
        if last == n and (not ends or ends[-1] != n):
            ends.append(n)
        sections = [end for end in ends if end < n and priority[end] == SECTION]
        ends = [end for end in ends if not sections or end <= sections[0]]
        if not ends:
            return None
        target = max(16, self.paragraph_size - taken)
        within = [end for end in ends if end - first <= target]
        beyond = [end for end in ends if end - first > target]
        enough = [end for end in within if end - first >= target * MIN_FILL]
        if enough:
            return enough[0] if self.packing == "fewest" else enough[-1]
        return beyond[0] if beyond else None  # None: short paragraphs, then one past the window: cut as before


def _boundaries(text: str, starts: list[int], sections: list[_Section], pages: Sequence[Any]) -> np.ndarray:
    """Per token index t: the strength of cutting just before token t (-1: inside a word). A page break is a line
    break, not a paragraph: a PDF's sentences run on across pages."""
    priority = np.full(len(starts) + 1, -1, dtype=np.int8)
    token_starts = np.asarray(starts, dtype=np.int64)
    for strength, pattern in BOUNDARIES:
        ends = np.fromiter((m.end() for m in pattern.finditer(text)), dtype=np.int64)
        np.maximum.at(priority, np.searchsorted(token_starts, ends, side="left"), strength)
    for page in pages[1:]:
        at = int(np.searchsorted(token_starts, page.start, side="left"))
        priority[at] = min(int(priority[at]), PARAGRAPH - 1)
    for section in sections:
        priority[int(np.searchsorted(token_starts, section.start, side="left"))] = SECTION
    return priority


def _sections(doc: Document) -> list[_Section]:
    """The document's sections: those its extraction found (``ingest.extract.StructuredDocument``), else its Markdown
    headings (``#`` lines), each running to the next heading of the same or a higher level."""
    given = getattr(doc, "sections", None)
    if given:
        return [_Section(s.level, s.title, s.start, s.end) for s in given]
    fences = [(m.start(), m.end()) for m in _FENCE.finditer(doc.text)]
    headings = [
        (len(m.group(1)), m.group(2).strip(), m.start())
        for m in _MARKDOWN_HEADING.finditer(doc.text)
        if not any(start < m.start() < end for start, end in fences)
    ]
    return [
        _Section(level, title, start, next((s for lv, _, s in headings[i + 1 :] if lv <= level), len(doc.text)))
        for i, (level, title, start) in enumerate(headings)
    ]


def _heading_path(sections: list[_Section], offset: int) -> list[str]:
    holding = [s for s in sections if s.start <= offset < s.end]
    return [s.title for s in sorted(holding, key=lambda s: (s.level, s.start))]


def _page_at(doc: Document, offset: int) -> int | None:
    pages = getattr(doc, "pages", None)
    if not pages:
        return None
    index = bisect.bisect_right([p.start for p in pages], offset) - 1
    return int(pages[max(index, 0)].number)


def splitter_for(
    encoder: Any,
    overlap: int = DEFAULT_OVERLAP,
    passage_tokens: int | None = PASSAGE_TOKENS,
    paragraph_share: float | None = PARAGRAPH_SHARE,
    packing: str = PACKING,
) -> Splitter:
    """The splitter for a bi-encoder: its own (fast) tokenizer, window and document prompt; a cut document's passages
    hold at most ``passage_tokens`` tokens (None: as many as the window), whole paragraphs up to ``paragraph_share``
    of that where paragraphs allow (None: fill it)."""
    light = getattr(encoder, "light", None)
    if light is not None and getattr(encoder, "_model", None) is None:
        tokenizer = light.tokenizer
    else:
        backend = getattr(encoder.model.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"bi-encoder {encoder.name!r} has no fast tokenizer to split documents with")
        tokenizer = backend
    window = int(encoder.max_seq_length or 512)
    prompt = getattr(encoder, "document_prompt", "") or ""
    return Splitter(
        tokenizer,
        window,
        overlap=overlap,
        prompt=prompt,
        passage_tokens=passage_tokens,
        paragraph_share=paragraph_share,
        packing=packing,
    )


def encoding_texts(doc: Document, passages: Sequence[Passage]) -> list[str]:
    """What the encoders read for each passage: the document as before when it is one passage, else each passage
    after its context (title and heading path)."""
    if len(passages) <= 1:
        return [doc.text_for_encoding()]
    texts = []
    for passage in passages:
        context = passage.context(doc.title)
        texts.append(f"{context}. {passage.text}" if context else passage.text)
    return texts


class SplitBatch:
    """Documents split into passages to be encoded elsewhere (Ray actors, rows back in any order), and put back
    together: a document is ready to store once every one of its passages has its vector."""

    def __init__(self, docs: Sequence[Document], splitter: Splitter):
        self.docs = list(docs)
        self.splits = splitter.split_many(self.docs)
        self.texts: list[str] = []
        self.owner: list[int] = []
        for i, (doc, split) in enumerate(zip(self.docs, self.splits)):
            for text in encoding_texts(doc, split):
                self.texts.append(text)
                self.owner.append(i)
        self.rows: list[list[int]] = [[] for _ in self.docs]
        for row, i in enumerate(self.owner):
            self.rows[i].append(row)
        self._vectors: dict[int, np.ndarray] = {}
        self._tokens: dict[int, Any] = {}

    def arrived(self, rows: Sequence[int], vectors: np.ndarray, tokens: Sequence[Any] | None) -> list[int]:
        """Take encoded rows; return the documents (indexes) whose passages are now all in, each once."""
        touched = set()
        for n, row in enumerate(rows):
            self._vectors[int(row)] = vectors[n]
            if tokens is not None:
                self._tokens[int(row)] = tokens[n]
            touched.add(self.owner[int(row)])
        return sorted(i for i in touched if all(r in self._vectors for r in self.rows[i]) and self.rows[i])

    def ready(self, indexes: Sequence[int]) -> tuple[list[Document], np.ndarray, list | None, list, list[str]]:
        """Those documents, their passages' vectors and tokens (None if none came) in order, splits and texts."""
        rows = [r for i in indexes for r in self.rows[i]]
        tokens = [self._tokens.pop(r) for r in rows] if self._tokens else None
        vectors = np.stack([self._vectors.pop(r) for r in rows]).astype(np.float32)
        for i in indexes:
            self.rows[i] = []  # given out: never ready again
        return (
            [self.docs[i] for i in indexes],
            vectors,
            tokens,
            [self.splits[i] for i in indexes],
            [self.texts[r] for r in rows],
        )
