"""A seeded synthetic long document with a planted passage near its end (shared by the framework tests)."""

from __future__ import annotations

import random

_VOCABULARY = (
    "river meadow lantern copper harbor violet engine summit canyon orchard glacier marble thunder pepper saddle "
    "quartz willow falcon ember velvet anchor cobalt prairie tundra beacon maple onyx delta sierra amber basalt "
    "cedar dune fjord grove heron iris jasper kelp lagoon mesa nectar"
)
WORDS = _VOCABULARY.split()

NEEDLE = "The vault combination is seven seven three nine, kept by the lighthouse keeper of Skerryvore."


def long_document(tokens_at_least: int, count_tokens, seed: int = 0) -> tuple[str, int]:
    """(text, character offset of the needle): random sentences, the needle in the last 3% of the text."""
    rng = random.Random(seed)
    sentences: list[str] = []
    text = ""
    while True:
        sentences.extend(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "." for _ in range(200)
        )
        text = " ".join(sentences)
        if count_tokens(text) >= tokens_at_least:
            break
    cut = int(len(text) * 0.98)
    cut = text.index(". ", cut) + 2
    return text[:cut] + NEEDLE + " " + text[cut:], cut
