"""From a text to token ids: render the prompt, truncate the text (never the prompt), find pooling spans."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .prompts import PromptTemplate, Role


@dataclass
class EncodedText:
    """One prompted text as token ids, with what pooling and token prepending need."""

    ids: list[int]
    pool_start: int  # first token of the pooled span (mean pooling)
    pool_end: int  # one past its last token
    text_start: int  # first token of the (first copy of the) text: where a placeholder would go
    truncated_by: int = 0  # text tokens dropped to fit max_length
    text_end: int = -1  # one past the (first copy of the) text's last token; -1: not known
    #: (target, source) positions: at the input of the prepending layers, target's state becomes source's
    copies: list[tuple[int, int]] = field(default_factory=list)
    pool_skip: list[int] = field(default_factory=list)  # positions inside the pooled span left out of the mean


class PromptTooLongError(ValueError):
    """The prompt alone does not fit in max_length."""


def _tokens_in(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of tokens whose characters start inside ``[start, end)`` (special tokens have empty offsets)."""
    return [i for i, (a, b) in enumerate(offsets) if b > a and start <= a < end]


def _fallback_id(tokenizer: Any) -> int:
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def encode_text(
    tokenizer: Any,
    text: str,
    template: PromptTemplate,
    role: Role,
    max_length: int,
    *,
    pool_last_copy: bool = False,
    reserve: int = 0,
) -> EncodedText:
    """Tokenize ``text`` in its prompt, cutting the text's tail until the whole fits ``max_length - reserve``.

    Special tokens the tokenizer adds (BOS) are kept. Pooling spans run over the whole prompted input
    (minus leading special tokens) or, with ``pool_last_copy``, over the last copy of the text only.
    """
    budget = max_length - reserve
    text = _encodable(text)
    original_text = text
    rendered, spans = template.render(text, role)
    original_count: int | None = None  # the text's own tokens before any cut (for the warning's numbers)
    for _ in range(8):  # re-tokenising a cut string can shift a boundary by a token: converge in a few rounds
        enc = tokenizer(rendered, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
        ids: list[int] = list(enc["input_ids"])
        offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
        excess = len(ids) - budget
        if excess <= 0:
            break
        text_tokens = _tokens_in(offsets, *spans[0])
        if original_count is None:
            original_count = len(text_tokens)
        if not text_tokens or not text:
            raise PromptTooLongError(
                f"the prompt alone takes {len(ids)} tokens, more than max_length={max_length}"
                f"{f' minus {reserve} reserved' if reserve else ''}; raise max_length or shorten the prompt"
            )
        per_copy = math.ceil(excess / len(spans))
        keep = len(text_tokens) - per_copy
        cut = 0 if keep <= 0 else offsets[text_tokens[keep]][0] - spans[0][0]
        text = text[:cut]
        rendered, spans = template.render(text, role)
    else:  # pragma: no cover - tokenizers that grow when cut
        raise PromptTooLongError(f"could not fit the text into max_length={max_length} tokens")

    if not ids:  # an empty text with no prompt and no BOS still yields one well-defined token
        ids, offsets = [_fallback_id(tokenizer)], [(0, 0)]

    lead = 0
    while lead < len(ids) - 1 and offsets[lead][1] <= offsets[lead][0]:
        lead += 1  # leading special tokens (BOS): outside the mean, which they would dominate
    first_text = _tokens_in(offsets, *spans[0])
    text_start = first_text[0] if first_text else _first_at_or_after(offsets, spans[0][0], len(ids))
    pool_start, pool_end = lead, len(ids)
    if pool_last_copy:
        copy = _tokens_in(offsets, *spans[-1])
        if copy:
            pool_start, pool_end = copy[0], copy[-1] + 1
    truncated_by = 0
    if text != original_text:
        truncated_by = max(1, (original_count or 0) - len(first_text))
    text_end = first_text[-1] + 1 if first_text else text_start
    return EncodedText(ids, pool_start, pool_end, text_start, truncated_by=truncated_by, text_end=text_end)


def sentence_end_token(token: str) -> bool:
    """A token that ends a sentence: one holding a line break, or ending in ``.``, ``!`` or ``?`` (byte-level
    and SentencePiece spellings of spaces and newlines included). HTP splits with spaCy; tokens are enough here."""
    plain = token.replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n").replace("<0x0A>", "\n")
    return "\n" in plain or plain.rstrip().endswith((".", "!", "?"))


def hierarchical_markers(item: EncodedText, ends: list[bool], marker: int) -> EncodedText:
    """HTP's input: a ``marker`` before each sentence of the text and a block of one marker per sentence at the
    start of the text, with the positions each marker copies at the prepending layers and a pooled span that
    covers the text's own tokens only. ``ends[i]``: the text's ``i``-th token ends a sentence."""
    text = item.ids[item.text_start : item.text_end]
    if not text:
        return item
    bounds, begin = [], 0
    for i in range(len(text)):
        if ends[i] or i == len(text) - 1:
            bounds.append((begin, i + 1))
            begin = i + 1
    prefix, suffix = item.ids[: item.text_start], item.ids[item.text_end :]
    ids = [*prefix, *([marker] * len(bounds))]
    placeholders, last_tokens = [], []
    for begin, end in bounds:
        placeholders.append(len(ids))
        ids.append(marker)
        ids.extend(text[begin:end])
        last_tokens.append(len(ids) - 1)
    text_end = len(ids)
    ids.extend(suffix)
    # a sentence is summarised by its last token; the last sentence by the token after the text (HTP's "</s>")
    sources = [*last_tokens[:-1], text_end if suffix else last_tokens[-1]]
    front = range(len(prefix), len(prefix) + len(bounds))
    copies = [*zip(placeholders, sources, strict=True), *zip(front, sources, strict=True)]
    return EncodedText(
        ids,
        placeholders[0],
        text_end,
        len(prefix),
        truncated_by=item.truncated_by,
        text_end=text_end,
        copies=copies,
        pool_skip=placeholders,
    )


def _encodable(text: str) -> str:
    """Lone surrogates (invalid in UTF-8, refused by tokenizers) become U+FFFD; everything else is kept."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _first_at_or_after(offsets: list[tuple[int, int]], char: int, n: int) -> int:
    for i, (a, b) in enumerate(offsets):
        if b > a and a >= char:
            return i
    return n
