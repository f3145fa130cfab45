"""``KVEmbedding``: KV-Embedding as a LlamaIndex ``BaseEmbedding``."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from kvembed_rag import KVEmbedConfig, KVEmbedder, shared_embedder
from kvembed_rag.config import option_default, option_help
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

    # the embedder's options, with the config's own defaults and help texts (one definition of each)
    # unknown keywords are refused: LlamaIndex's default (ignore) would turn ``model=...`` (LangChain's
    # spelling) into a silent load of the default model
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(default=option_default("model"), description=option_help("model"))
    revision: str | None = Field(default=option_default("revision"), description=option_help("revision"))
    trust_remote_code: bool = Field(
        default=option_default("trust_remote_code"), description=option_help("trust_remote_code")
    )
    attn_implementation: str = Field(
        default=option_default("attn_implementation"), description=option_help("attn_implementation")
    )
    method: str = Field(default=option_default("method"), description=option_help("method"))
    layers: list[int] | str | None = Field(default=option_default("layers"), description=option_help("layers"))
    bias: float | None = Field(default=option_default("bias"), description=option_help("bias"))
    pooling: str | None = Field(default=option_default("pooling"), description=option_help("pooling"))
    prompts: dict[str, str] | str | None = Field(default=option_default("prompts"), description=option_help("prompts"))
    max_length: int | None = Field(default=option_default("max_length"), description=option_help("max_length"))
    batch_tokens: int = Field(default=option_default("batch_tokens"), description=option_help("batch_tokens"))
    padding_side: str | None = Field(default=option_default("padding_side"), description=option_help("padding_side"))
    device: str | None = Field(default=option_default("device"), description=option_help("device"))
    dtype: str | None = Field(default=option_default("dtype"), description=option_help("dtype"))
    model_kwargs: dict[str, Any] | None = Field(
        default=option_default("model_kwargs"), description=option_help("model_kwargs")
    )
    postprocess: str = Field(default=option_default("postprocess"), description=option_help("postprocess"))
    show_progress: bool = Field(default=option_default("show_progress"), description=option_help("show_progress"))
    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, gt=0, description="texts per call to the model")
    fingerprint: str = Field(
        default="",
        description="set from the loaded embedder (model, resolved layers, dtype ...): part of to_dict(), so "
        "IngestionCache keys change with the configuration",
    )

    _embedder: KVEmbedder | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._embedder = shared_embedder(self.config)
        self.fingerprint = self._embedder.fingerprint  # whatever was passed in: the loaded model decides

    @property
    def config(self) -> KVEmbedConfig:
        """The embedder configuration these fields ask for."""
        return KVEmbedConfig(model=self.model_name, **{name: getattr(self, name) for name in ADAPTER_OPTIONS})

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
