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
=====================  =========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .prompts import ECHO_PROMPTS, KV_PROMPTS, PLAIN, PROMPTEOL, PromptTemplate


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
    )
}


def get_method(name: str) -> MethodSpec:
    key = name.lower().replace("_", "-")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[key]


def first_candidate_layer(num_layers: int) -> int:
    """The first layer at or past 20% of the depth (the first 20% are never re-routed)."""
    if num_layers < 1:
        raise ValueError(f"a model needs at least one layer; got {num_layers}")
    return min(math.ceil(0.2 * num_layers), num_layers - 1)


def default_window(num_layers: int) -> list[int]:
    """The fallback re-routing window: starts at 20% of the depth, floor(0.1 L) + 1 layers long."""
    start = first_candidate_layer(num_layers)
    length = num_layers // 10 + 1
    return list(range(start, min(start + length, num_layers)))


def token_prepending_layers(num_layers: int) -> list[int]:
    """Layers at whose input the placeholder is overwritten: 1 .. floor(L/4) (the paper's early layers)."""
    return list(range(1, max(2, num_layers // 4 + 1)))


def validate_layers(layers: object, num_layers: int) -> list[int]:
    """Explicit layers: a list of distinct ints in ``[0, num_layers)``, sorted."""
    if isinstance(layers, int):
        layers = [layers]
    if not isinstance(layers, (list, tuple, range, set, frozenset)):
        raise TypeError(f"layers must be 'auto', 'default' or a list of layer indices; got {type(layers).__name__}")
    result: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer indices must be ints; got {layer!r}")
        index = layer + num_layers if layer < 0 else layer
        if not 0 <= index < num_layers:
            raise ValueError(
                f"layer {layer} is out of range for a model with {num_layers} layers (0..{num_layers - 1})"
            )
        result.append(index)
    return sorted(set(result))
