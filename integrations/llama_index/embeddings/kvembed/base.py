"""``KVEmbedding``: KV-Embedding as a LlamaIndex ``BaseEmbedding``."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from kvembed_rag import KVEmbedder, shared_embedder
from kvembed_rag.embedder import ADAPTER_OPTIONS

DEFAULT_EMBED_BATCH_SIZE = 32


class KVEmbedding(BaseEmbedding):
    """Query and text embeddings from a frozen decoder-only LLM (KV-Embedding and its baselines).

    Example:
        .. code-block:: python

            from llama_index.core import Settings, VectorStoreIndex
            from llama_index.embeddings.kvembed import KVEmbedding

            Settings.embed_model = KVEmbedding()              # Gemma-3-270M from PyPI, offline
            index = VectorStoreIndex.from_documents(documents)

    Queries use the query prompt, nodes the document prompt. The model lives in a private attribute
    and is left out of pickles: an unpickled copy (``IngestionPipeline(num_workers=N)``, Ray) reloads it
    from these fields, once per process.
    """

    model_name: str = Field(default="default", description="'default', a hub id, a local directory or a .gguf file")
    method: str = Field(default="kv", description="kv, prompteol, last, mean, echo, bidirectional, token-prepending")
    layers: list[int] | str | None = Field(default="auto", description="re-routed layers, 'auto' or 'default'")
    bias: float | None = Field(default=None, description="logit bias on the re-routed slot (None: tuned or 1.0)")
    pooling: str | None = Field(default=None, description="hybrid, mean or last (default: the method's)")
    prompts: dict[str, str] | None = Field(default=None, description="document/query templates with {text}")
    max_length: int | None = Field(default=None, description="tokens per input (default 4096)")
    batch_tokens: int = Field(default=16_384, description="padded tokens per forward pass")
    device: str | None = Field(default=None, description="cpu, cuda or mps (default: best available)")
    dtype: str | None = Field(default=None, description="float32, bfloat16 or float16")
    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, gt=0, description="texts per call to the model")
    fingerprint: str = Field(
        default="",
        description="set from the loaded embedder (model, resolved layers, dtype ...): part of to_dict(), so "
        "IngestionCache keys change with the configuration",
    )

    _embedder: KVEmbedder | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._embedder = shared_embedder(self.model_name, **{name: getattr(self, name) for name in ADAPTER_OPTIONS})
        self.fingerprint = self._embedder.fingerprint  # whatever was passed in: the loaded model decides

    @classmethod
    def class_name(cls) -> str:
        return "KVEmbedding"

    @property
    def embedder(self) -> KVEmbedder:
        """The core embedder behind this adapter."""
        assert self._embedder is not None
        return self._embedder

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        private = state.get("__pydantic_private__") or {}
        private.pop("_embedder", None)  # never ship model weights in a pickle; __setstate__ reloads them
        return state

    def _get_query_embedding(self, query: str) -> Embedding:
        return self.embedder.encode_queries(query).tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self.embedder.encode_documents(text).tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self.embedder.encode_documents(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
