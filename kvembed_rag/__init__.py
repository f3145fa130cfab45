"""kvembed-rag: KV-Embedding (arXiv 2601.01046) turns a frozen decoder-only LLM into a text embedder."""

from __future__ import annotations

__version__ = "0.1.0"

from .attention import ReroutingPlan
from .config import KVEmbedConfig
from .embedder import KVEmbedder, shared_embedder
from .errors import (
    ConfigError,
    EmbedderMismatchError,
    EmbeddingMemoryError,
    IndexCorruptError,
    KVEmbedError,
    ModelLoadError,
    TruncationWarning,
    UnsupportedAttentionError,
    UnsupportedModelError,
)
from .methods import METHODS
from .prompts import PromptTemplate
from .retrieval.vector_index import VectorIndex

__all__ = [
    "METHODS",
    "ConfigError",
    "EmbedderMismatchError",
    "EmbeddingMemoryError",
    "IndexCorruptError",
    "KVEmbedConfig",
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
