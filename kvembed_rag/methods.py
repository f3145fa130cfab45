"""The embedding methods behind one switch, all on the same frozen backbone.

=====================  =========================================================================
``kv``                 KV-Embedding: compression prompt, last-token K/V re-routed as a prefix in
                       the selected layers, hybrid (mean + last) pooling.
``prompteol``          PromptEOL's one-word prompt, last token.
``last``               The bare text, last token.
``mean``               The bare text, mean over its tokens.
``echo``               Echo embeddings: the text twice, mean over the second copy (~2x tokens).
``bidirectional``      The compression prompt with the causal mask removed in every layer (padding
                       stays masked), hybrid pooling, no re-routing: the "just let every token see
                       the end" ablation, without training.
``token-prepending``   Token Prepending: PromptEOL with a placeholder token before the text whose
                       hidden state is overwritten, at the input of the early layers, by the previous
                       layer's last-token state; last-token pooling.
``htp``                Hierarchical Token Prepending (arXiv 2511.14868), the long-document baseline:
                       the text cut into sentences, a placeholder before each and a block of one per
                       sentence at the start of the text; at the input of the early layers each
                       sentence's placeholders get the state of its last token (the last sentence's:
                       the token after the text), so every token sees every earlier sentence's summary
                       and the front block; mean over the text's own tokens.
=====================  =========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from .prompts import ECHO_PROMPTS, HTP_PROMPTS, KV_PROMPTS, PLAIN, PROMPTEOL, PromptTemplate


@dataclass(frozen=True)
class MethodSpec:
    """What a method changes: prompt, pooling and the forward pass."""

    name: str
    prompts: PromptTemplate
    pooling: str
    reroute: bool = False
    bidirectional: bool = False
    pool_last_copy: bool = False  # echo: mean only over the last copy of the text
    token_prepending: bool = False
    hierarchical_prepending: bool = False  # HTP: per-sentence placeholders and a front block (see the table)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("kv", KV_PROMPTS, "hybrid", reroute=True),
        MethodSpec("prompteol", PROMPTEOL, "last"),
        MethodSpec("last", PLAIN, "last"),
        MethodSpec("mean", PLAIN, "mean"),
        MethodSpec("echo", ECHO_PROMPTS, "mean", pool_last_copy=True),
        MethodSpec("bidirectional", KV_PROMPTS, "hybrid", bidirectional=True),
        MethodSpec("token-prepending", PROMPTEOL, "last", token_prepending=True),
        MethodSpec("htp", HTP_PROMPTS, "mean", hierarchical_prepending=True),
    )
}


def get_method(name: str) -> MethodSpec:
    key = name.lower().replace("_", "-")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[key]


def token_prepending_layers(num_layers: int) -> list[int]:
    """Layers at whose input the placeholder is overwritten: 1 .. floor(L/4) (the paper's early layers)."""
    return list(range(1, max(2, num_layers // 4 + 1)))
