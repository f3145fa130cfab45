"""From a text to token ids: render the prompt, truncate the text (never the prompt), find pooling spans."""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    return EncodedText(ids, pool_start, pool_end, text_start, truncated_by=truncated_by)


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
