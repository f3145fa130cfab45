"""Retrieval: the vector index, metadata filters, chunking, document readers, the index pipeline, Ray scale-out."""

from .chunking import Chunk, Chunking, chunk_text
from .documents import SourceDocument, read_sources
from .pipeline import (
    BuildReport,
    DocumentHit,
    best_per_document,
    build_index,
    load_for_search,
    search_documents,
)
from .vector_index import Hit, Record, VectorIndex, check_compatible

__all__ = [
    "BuildReport",
    "Chunk",
    "Chunking",
    "DocumentHit",
    "Hit",
    "Record",
    "SourceDocument",
    "VectorIndex",
    "best_per_document",
    "build_index",
    "check_compatible",
    "chunk_text",
    "load_for_search",
    "read_sources",
    "search_documents",
]
