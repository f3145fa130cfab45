"""Split only what does not fit: documents longer than a passage become overlapping chunks.

A document that fits in ``max_tokens`` tokens (prompt included) is embedded whole. A longer one is cut into
windows of whole tokens that overlap by ``overlap`` tokens; each window starts with the document's title (when
given) so that a chunk from the middle of a report still says what it belongs to.

How large: ``chunk_text`` on its own fills the embedder's window (``max_length``, 4,096 by default), which is
what the document-level evaluations measure. What a RAG pipeline indexes (``kvembed-rag index``, the LangChain
and LlamaIndex splitters) is passages of :data:`PASSAGE_TOKENS` (2,048) text tokens (:func:`passage_input_tokens`):
on QMSum meetings they put more of the answer into a 2,048-token generator budget than 128- to 1,024-token passages
(docs/RESULTS.md, "Passage size beyond 512"). Small-to-big (``child_tokens``, off by default) embeds each passage
as its :func:`passage_pieces` and scores it by the best of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import PASSAGE_TOKENS

LONG_DOC_POLICIES = ("chunk", "truncate")


@dataclass(frozen=True)
class Chunking:
    """How the index pipeline cuts a document into what it stores: one value for ``build_index``,
    ``fit_index_postprocess``, ``kvembed-rag index`` and the index's manifest (:meth:`record`), so a new cutting
    option is one field here and its use in :func:`~kvembed_rag.retrieval.pipeline.index_units`."""

    long_docs: str = "chunk"  # "chunk": titled, overlapping passages; "truncate": the whole text, cut at max_length
    passage_tokens: int | None = PASSAGE_TOKENS  # text tokens per passage; None or 0: as many as max_length holds
    overlap: int = 64  # tokens neighbouring passages share
    child_tokens: int | None = 0  # > 0: each passage embedded as pieces of this many tokens, scored by the best

    def __post_init__(self) -> None:
        if self.long_docs not in LONG_DOC_POLICIES:
            raise ValueError(f"long_docs must be one of {LONG_DOC_POLICIES}; got {self.long_docs!r}")
        for name in ("passage_tokens", "overlap", "child_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int; got {value!r}")
        if self.long_docs == "truncate":  # a whole text has no passages to cut into pieces
            object.__setattr__(self, "child_tokens", 0)

    def record(self) -> dict[str, Any]:
        """The cut as an index's manifest records it (``passage_tokens`` 0 = ``max_length``; ``child_tokens`` only
        when nonzero, so indexes built before it existed compare equal)."""
        if self.long_docs == "truncate":
            return {"long_docs": "truncate"}
        record: dict[str, Any] = {
            "long_docs": self.long_docs,
            "passage_tokens": int(self.passage_tokens or 0),
            "overlap": int(self.overlap),
        }
        if self.child_tokens:
            record["child_tokens"] = int(self.child_tokens)
        return record


@dataclass
class Chunk:
    text: str
    index: int  # position of the chunk in its document
    start: int  # character offsets of the window in the original text
    end: int


def prompt_overhead(embedder: Any, role: str = "document") -> int:
    """Tokens the prompt (and BOS) take around an empty text."""
    return len(embedder.tokenize([""], role)[0].ids)


def text_copies(embedder: Any, role: str = "document") -> int:
    """How many times the prompt repeats the text (echo embeddings: twice), each copy costing its tokens."""
    prompts = getattr(embedder, "prompts", None)
    return max(1, len(prompts.render("", role)[1])) if prompts is not None else 1


def text_token_budget(embedder: Any, max_tokens: int | None = None, *, margin: int = 8, role: str = "document") -> int:
    """Tokens of text one input can hold: ``max_tokens`` (default the embedder's ``max_length``) minus the
    prompt's tokens and ``margin``, shared between the text's copies when the prompt repeats it (echo)."""
    total = (max_tokens or embedder.max_length) - prompt_overhead(embedder, role) - margin
    return total // text_copies(embedder, role)


def passage_input_tokens(embedder: Any, text_tokens: int | None = PASSAGE_TOKENS, *, margin: int = 8) -> int:
    """Tokens per embedder input (prompt and ``margin`` included) that hold ``text_tokens`` of text, at most the
    embedder's ``max_length``; ``None`` or 0: ``max_length`` (a document embedded whole when it fits)."""
    if not text_tokens:
        return int(embedder.max_length)
    if text_tokens < 16:
        raise ValueError(f"a passage needs at least 16 text tokens; got {text_tokens}")
    needed = text_tokens * text_copies(embedder) + prompt_overhead(embedder) + margin
    return min(int(embedder.max_length), needed)


def chunk_text(
    embedder: Any,
    text: str,
    *,
    title: str | None = None,
    max_tokens: int | None = None,
    overlap: int = 64,
    margin: int = 8,
) -> list[Chunk]:
    """The text itself if it fits, else overlapping windows of at most ``max_tokens`` tokens (each titled).

    ``max_tokens`` defaults to the embedder's ``max_length`` minus the prompt, shared between the text's copies
    when the prompt repeats it (echo: half each, else the tokenizer would cut every chunk to its first half);
    ``margin`` keeps a few tokens spare because a window re-tokenised inside the prompt can merge differently
    at its edges.
    """
    budget = text_token_budget(embedder, max_tokens, margin=margin)
    header = f"{title}\n\n" if title else ""
    offsets = embedder.token_offsets(text)
    cost = _input_cost(embedder, text, len(offsets))
    header_tokens = _input_cost(embedder, header, len(embedder.token_offsets(header)))(0, -1) if header else 0
    if cost(0, len(offsets) - 1) + header_tokens <= budget:
        return [Chunk(header + text if header and not text.startswith(title or "") else text, 0, 0, len(text))]
    window = budget - header_tokens
    if window < 16:
        raise ValueError(f"max_tokens leaves only {window} tokens per chunk after the prompt and title")
    chunks: list[Chunk] = []
    first = 0
    while True:
        last = min(first + window, len(offsets)) - 1
        while last > first and cost(first, last) > window:  # HTP: the window's sentence markers count too
            last -= 1
        start, end = offsets[first][0], offsets[last][1]
        chunks.append(Chunk(header + text[start:end], len(chunks), start, end))
        if last == len(offsets) - 1:
            return chunks
        size = last - first + 1
        first = max(first + 1, last + 1 - min(overlap, size // 2))


def passage_pieces(embedder: Any, text: str, child_tokens: int, *, title: str | None = None) -> list[str]:
    """What a passage is embedded as for small-to-big retrieval: its (titled) pieces of at most ``child_tokens`` text
    tokens, or the passage itself when it fits one. The index keeps every piece's vector and scores the passage by
    the best (``VectorIndex.upsert(..., vector_counts=...)``); BM25 and the reader get the passage.

    Pieces are whole lines packed in order (a speaker's turn, a paragraph), and a line longer than a piece becomes
    token windows: on QMSum pieces of whole turns scored passages better than pieces cut at token boundaries
    (docs/RESULTS.md, "Small-to-big, built and measured")."""
    size = passage_input_tokens(embedder, child_tokens)
    budget = text_token_budget(embedder, size)
    header = f"{title}\n\n" if title else ""
    header_tokens = len(embedder.token_offsets(header)) if header else 0
    whole = chunk_text(embedder, text, title=title, max_tokens=size, overlap=0)
    if len(whole) == 1:
        return [whole[0].text]
    room = budget - header_tokens
    pieces: list[str] = []
    current, used = "", 0
    for line in text.splitlines(keepends=True):
        cost = _input_cost(embedder, line, len(embedder.token_offsets(line)))(0, -1)
        if current and used + cost > room:
            pieces.append(header + current)
            current, used = "", 0
        if cost > room:  # one line longer than a piece: its own token windows
            pieces += [c.text for c in chunk_text(embedder, line, title=title, max_tokens=size, overlap=0)]
            continue
        current, used = current + line, used + cost
    if current.strip():
        pieces.append(header + current)
    return pieces


def pieces_of_texts(embedder: Any, texts: list[str], child_tokens: int | None) -> list[list[str]]:
    """Each text's :func:`passage_pieces` (``child_tokens``), or each text whole when ``child_tokens`` is 0/None or
    ``embedder`` is not one that tokenizes (the adapters accept any framework embeddings)."""
    if not child_tokens or not hasattr(embedder, "token_offsets"):
        return [[text] for text in texts]
    return [passage_pieces(embedder, text, child_tokens) for text in texts]


def _input_cost(embedder: Any, text: str, count: int) -> Callable[[int, int], int]:
    """``cost(first, last)``: input tokens that ``text``'s tokens ``first..last`` take (``last`` -1: all of them):
    one each, plus HTP's two markers per sentence (:meth:`KVEmbedder.sentence_ends`) for methods that add them."""
    sentence_ends = getattr(embedder, "sentence_ends", None)
    ends = sentence_ends(text) if sentence_ends is not None else None
    if not ends:
        return lambda first, last: (count if last < 0 else last + 1) - first
    before = [0]  # before[i]: sentence ends among tokens 0..i-1
    for flag in ends:
        before.append(before[-1] + int(flag))

    def cost(first: int, last: int) -> int:
        last = len(ends) - 1 if last < 0 else last
        # a sentence ends at each flagged token before the window's last, and the window's last token ends one
        return last + 1 - first + 2 * (before[last] - before[first] + 1)

    return cost
