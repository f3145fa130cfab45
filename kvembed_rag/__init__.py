"""kvembed-rag: KV-Embedding (arXiv 2601.01046) turns a frozen decoder-only LLM into a text embedder."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
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

# public name -> submodule. Imported on first use, so that `import kvembed_rag` (and the command line's
# --help, --version and usage errors) does not pay for torch and transformers.
_LAZY = {
    "ReroutingPlan": "attention",
    "EmbeddingMemoryError": "embedder",
    "KVEmbedder": "embedder",
    "TruncationWarning": "embedder",
    "shared_embedder": "embedder",
    "KVEmbedError": "errors",
    "ModelLoadError": "errors",
    "UnsupportedAttentionError": "errors",
    "UnsupportedModelError": "errors",
    "EmbedderMismatchError": "index",
    "IndexCorruptError": "index",
    "VectorIndex": "index",
    "METHODS": "methods",
    "PromptTemplate": "prompts",
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
