"""kvembed-rag: KV-Embedding (arXiv 2601.01046) turns a frozen decoder-only LLM into a text embedder."""

from __future__ import annotations

__version__ = "0.1.0"

from .attention import ReroutingPlan
from .chunking import Chunk, chunk_text, text_token_budget
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
from .quantization import quantize_embeddings

__all__ = [
    "METHODS",
    "Chunk",
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
    "chunk_text",
    "quantize_embeddings",
    "shared_embedder",
    "text_token_budget",
]
