"""kvembed-rag: KV-Embedding (arXiv 2601.01046) turns a frozen decoder-only LLM into a text embedder."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .attention import ReroutingPlan
    from .config import CHILD_TOKENS, PASSAGE_TOKENS, KVEmbedConfig
    from .embedder import KVEmbedder, shared_embedder
    from .errors import (
        ChunkingMismatchError,
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
    from .quantization import quantize_embeddings
    from .retrieval.chunking import Chunk, Chunking, chunk_text, passage_input_tokens, passage_pieces, text_token_budget
    from .retrieval.vector_index import VectorIndex

# public name -> submodule. Imported on first use, so that `import kvembed_rag` (and the command line's
# --help, --version and usage errors) does not pay for torch and transformers.
_LAZY = {
    "ReroutingPlan": "attention",
    "KVEmbedConfig": "config",
    "PASSAGE_TOKENS": "config",
    "CHILD_TOKENS": "config",
    "KVEmbedder": "embedder",
    "shared_embedder": "embedder",
    **{
        name: "errors"
        for name in (
            "ChunkingMismatchError",
            "ConfigError",
            "EmbedderMismatchError",
            "EmbeddingMemoryError",
            "IndexCorruptError",
            "KVEmbedError",
            "ModelLoadError",
            "TruncationWarning",
            "UnsupportedAttentionError",
            "UnsupportedModelError",
        )
    },
    "VectorIndex": "retrieval.vector_index",
    "METHODS": "methods",
    "PromptTemplate": "prompts",
    "quantize_embeddings": "quantization",
    "Chunk": "retrieval.chunking",
    "Chunking": "retrieval.chunking",
    "chunk_text": "retrieval.chunking",
    "text_token_budget": "retrieval.chunking",
    "passage_input_tokens": "retrieval.chunking",
    "passage_pieces": "retrieval.chunking",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CHILD_TOKENS",
    "METHODS",
    "PASSAGE_TOKENS",
    "Chunk",
    "Chunking",
    "ChunkingMismatchError",
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
    "chunk_text",
    "passage_input_tokens",
    "passage_pieces",
    "quantize_embeddings",
    "shared_embedder",
    "text_token_budget",
]
