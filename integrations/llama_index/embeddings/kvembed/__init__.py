"""LlamaIndex integration of kvembed-rag: ``KVEmbedding``."""

from llama_index.embeddings.kvembed.base import KVEmbedding

__all__ = ["KVEmbedding"]
