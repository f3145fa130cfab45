"""LlamaIndex integration of kvembed-rag: ``KVEmbedding``, ``KVTokenNodeParser``, document-level retrieval."""

from llama_index.embeddings.kvembed.base import KVEmbedding
from llama_index.embeddings.kvembed.node_parser import KVTokenNodeParser
from llama_index.embeddings.kvembed.retrievers import (
    BestNodePerDocument,
    KVDocumentRetriever,
    KVIndexRetriever,
    best_node_per_document,
)

__all__ = [
    "BestNodePerDocument",
    "KVDocumentRetriever",
    "KVEmbedding",
    "KVIndexRetriever",
    "KVTokenNodeParser",
    "best_node_per_document",
]
