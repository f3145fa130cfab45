"""kvembed-rag: KV-Embedding (arXiv 2601.01046) turns a frozen decoder-only LLM into a text embedder."""

from __future__ import annotations

__version__ = "0.1.0"

from .attention import ReroutingPlan
from .embedder import KVEmbedder, TruncationWarning
from .errors import (
    KVEmbedError,
    ModelLoadError,
    UnsupportedAttentionError,
    UnsupportedModelError,
)
from .methods import METHODS
from .prompts import PromptTemplate

__all__ = [
    "METHODS",
    "KVEmbedError",
    "KVEmbedder",
    "ModelLoadError",
    "PromptTemplate",
    "ReroutingPlan",
    "TruncationWarning",
    "UnsupportedAttentionError",
    "UnsupportedModelError",
    "__version__",
]
