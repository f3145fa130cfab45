"""Prompt templates: how a text is wrapped before the forward pass.

A template is plain text with one or more ``{text}`` placeholders and nothing else special, so literal
braces need no escaping. Templates differ per role: documents and queries are compressed with different
instructions in KV-Embedding. The exact quoting and spacing of the paper's prompts is unknown; these are
reconstructions, kept configurable (``KVEmbedder.from_pretrained(..., prompts=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["document", "query"]
ROLES: tuple[Role, ...] = ("document", "query")
PLACEHOLDER = "{text}"


@dataclass(frozen=True)
class PromptTemplate:
    """Document and query templates, each containing ``{text}`` at least once."""

    document: str = PLACEHOLDER
    query: str = PLACEHOLDER

    def __post_init__(self) -> None:
        for role in ROLES:
            template = getattr(self, role)
            if not isinstance(template, str) or PLACEHOLDER not in template:
                raise ValueError(f"the {role} prompt must be a string containing {PLACEHOLDER!r}; got {template!r}")

    def for_role(self, role: Role) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}; got {role!r}")
        return str(getattr(self, role))

    def render(self, text: str, role: Role) -> tuple[str, list[tuple[int, int]]]:
        """The prompted string and the character span of every copy of ``text`` in it."""
        parts = self.for_role(role).split(PLACEHOLDER)
        pieces: list[str] = [parts[0]]
        spans: list[tuple[int, int]] = []
        cursor = len(parts[0])
        for tail in parts[1:]:
            spans.append((cursor, cursor + len(text)))
            pieces += [text, tail]
            cursor += len(text) + len(tail)
        return "".join(pieces), spans

    def to_dict(self) -> dict[str, str]:
        return {"document": self.document, "query": self.query}

    @classmethod
    def coerce(cls, value: PromptTemplate | dict[str, str] | str | None, default: PromptTemplate) -> PromptTemplate:
        """Accept a template, a ``{"document": ..., "query": ...}`` dict, one string for both roles, or None."""
        if value is None:
            return default
        if isinstance(value, PromptTemplate):
            return value
        if isinstance(value, str):
            return cls(document=value, query=value)
        if isinstance(value, dict):
            unknown = set(value) - set(ROLES)
            if unknown:
                raise ValueError(f"unknown prompt roles {sorted(unknown)}; use 'document' and 'query'")
            return cls(**{**default.to_dict(), **value})
        raise TypeError(f"prompts must be a PromptTemplate, a dict or a string; got {type(value).__name__}")


#: KV-Embedding's compression prompts (reconstructed from the paper)
KV_PROMPTS = PromptTemplate(
    document="Context: {text} Compress the Context in one word:",
    query="Query: {text} Compress the Query in one word:",
)
#: PromptEOL (Jiang et al., 2023), the classic one-word prompt
PROMPTEOL = PromptTemplate(
    document='This sentence : "{text}" means in one word:"',
    query='This sentence : "{text}" means in one word:"',
)
#: Echo embeddings (Springer et al., 2024): the text twice, pooled over the second copy
ECHO_PROMPTS = PromptTemplate(
    document="Rewrite the sentence: {text}, rewritten sentence: {text}",
    query="Rewrite the sentence: {text}, rewritten sentence: {text}",
)
#: HTP (arXiv 2511.14868, snap-research/HTP's config): the bare document, an instruction before the query; the
#: text is followed by one token (HTP's "</s>") whose state summarises the last sentence
HTP_PROMPTS = PromptTemplate(
    document="{text}\n",
    query="Retrieve relevant document. Text:{text}\n",
)
PLAIN = PromptTemplate()
