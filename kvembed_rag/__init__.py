"""kvembed-rag: KV-Embedding (arXiv 2601.01046) turns a frozen decoder-only LLM into a text embedder."""

from __future__ import annotations

__version__ = "0.1.0"

from .attention import ReroutingPlan
from .embedder import EmbeddingMemoryError, KVEmbedder, TruncationWarning, shared_embedder
from .errors import (
    KVEmbedError,
    ModelLoadError,
    UnsupportedAttentionError,
    UnsupportedModelError,
)
from .index import EmbedderMismatchError, IndexCorruptError, VectorIndex
from .methods import METHODS
from .prompts import PromptTemplate

__all__ = [
    "METHODS",
    "EmbedderMismatchError",
    "EmbeddingMemoryError",
    "IndexCorruptError",
    "KVEmbedError",
    "KVEmbedder",
    "ModelLoadError",
    "PromptTemplate",
    "ReroutingPlan",
    "TruncationWarning",
    "UnsupportedAttentionError",
    "UnsupportedModelError",
    "VectorIndex",
    "__version__",
    "shared_embedder",
]
