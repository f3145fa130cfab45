"""``KVEmbeddings``: KV-Embedding as a LangChain ``Embeddings``."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from kvembed_rag import KVEmbedConfig, KVEmbedder, shared_embedder
from kvembed_rag.config import option_default, option_help
from kvembed_rag.embedder import ADAPTER_OPTIONS


def _field(name: str) -> Any:
    """A pydantic field with the config's own default and help text (one definition of each option)."""
    return Field(default=option_default(name), description=option_help(name))


class KVEmbeddings(BaseModel, Embeddings):
    """Embed documents and queries with a frozen decoder-only LLM (KV-Embedding and its baselines).

    Example:
        .. code-block:: python

            from langchain_kvembed import KVEmbeddings

            embeddings = KVEmbeddings()                      # Gemma-3-270M from PyPI, offline
            embeddings = KVEmbeddings(model="Qwen/Qwen3-4B", method="kv", max_length=4096)
            vectors = embeddings.embed_documents(["long document ..."])
            query = embeddings.embed_query("a question")

    Documents and queries use different prompts. Loaded models are shared per process, so building many
    ``KVEmbeddings`` with the same arguments costs one load.
    """

    model: str = _field("model")
    revision: str | None = _field("revision")
    trust_remote_code: bool = _field("trust_remote_code")
    attn_implementation: str = _field("attn_implementation")
    method: str = _field("method")
    layers: list[int] | str | None = _field("layers")
    bias: float | None = _field("bias")
    pooling: str | None = _field("pooling")
    prompts: dict[str, str] | str | None = _field("prompts")
    max_length: int | None = _field("max_length")
    batch_tokens: int = _field("batch_tokens")
    padding_side: str | None = _field("padding_side")
    device: str | None = _field("device")
    dtype: str | None = _field("dtype")
    postprocess: str = _field("postprocess")
    model_kwargs: dict[str, Any] | None = _field("model_kwargs")
    show_progress: bool = _field("show_progress")

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    _embedder: KVEmbedder | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._embedder = shared_embedder(self.config)

    @property
    def config(self) -> KVEmbedConfig:
        """The embedder configuration these fields ask for."""
        return KVEmbedConfig(model=self.model, **{name: getattr(self, name) for name in ADAPTER_OPTIONS})

    @property
    def embedder(self) -> KVEmbedder:
        """The core embedder behind this adapter."""
        assert self._embedder is not None
        return self._embedder

    @property
    def cache_namespace(self) -> str:
        """A namespace for LangChain's ``CacheBackedEmbeddings``: the embedder's fingerprint (model, method,
        layers, bias, pooling, prompts, dtype, max_length), so a changed configuration never reads vectors
        cached by another one::

            CacheBackedEmbeddings.from_bytes_store(emb, store, namespace=emb.cache_namespace,
                                                   query_embedding_cache=True)
        """
        return f"kvembed-{self.embedder.fingerprint}"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages; plain Python floats (``ndarray.tolist()``)."""
        return self.embedder.encode_documents(texts, show_progress=self.show_progress).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query."""
        return self.embedder.encode_queries(text).tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """As :meth:`embed_documents`, in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """As :meth:`embed_query`, in a worker thread."""
        return await asyncio.to_thread(self.embed_query, text)
