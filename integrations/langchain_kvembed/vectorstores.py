"""``KVFaissVectorStore``: LangChain's ``VectorStore`` over kvembed-rag's FAISS index.

Differences from ``langchain_community.vectorstores.FAISS`` that users notice: upsert by id (adding an
existing id replaces it), deleting unknown ids is not an error, ``get_by_ids`` works, the distance is
always cosine (inner product on normalised vectors, higher is better) and survives a reload, and
``save_local``/``load_local`` use FAISS's own format plus JSON: no pickle, no
``allow_dangerous_deserialization`` flag. An index saved with a ``KVEmbeddings`` records the embedder's
description, and loading it with a different model or method raises ``EmbedderMismatchError``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from kvembed_rag.retrieval.filters import Filter
from kvembed_rag.retrieval.vector_index import Hit, VectorIndex
from langchain_kvembed.retrievers import KVFaissRetriever


def _describe(embedding: Embeddings) -> dict[str, Any] | None:
    """The core embedder's describe() when the embeddings are ours; None for any other Embeddings."""
    embedder = getattr(embedding, "embedder", None)
    describe = getattr(embedder, "describe", None)
    return describe() if callable(describe) else None


def _document(hit: Hit) -> Document:
    return Document(id=hit.id, page_content=hit.text or "", metadata=hit.metadata)


class KVFaissVectorStore(VectorStore):
    """A FAISS vector store with ids, upsert, metadata filters, MMR and pickle-free persistence.

    Example:
        .. code-block:: python

            from langchain_kvembed import KVEmbeddings, KVFaissVectorStore

            store = KVFaissVectorStore.from_texts(texts, KVEmbeddings(), metadatas=metadatas)
            store.similarity_search_with_score("question", k=5, filter={"source": "manual"})
            store.save_local("my-index")
            store = KVFaissVectorStore.load_local("my-index", KVEmbeddings())
            retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 5})
    """

    def __init__(self, embedding: Embeddings, index: VectorIndex | None = None, *, factory: str = "Flat") -> None:
        self._embedding = embedding
        self._index = index
        self._factory = factory if index is None else index.factory
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties
    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def index(self) -> VectorIndex | None:
        """The core index (None until the first vectors arrive and fix the dimension)."""
        return self._index

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: (score + 1.0) / 2.0  # cosine in [-1, 1] to relevance in [0, 1]

    # ------------------------------------------------------------------ writes
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and upsert texts; ids default to new UUIDs (``None`` entries too)."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"got {len(ids)} ids for {len(texts)} texts")
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{position}] is {type(text).__name__}, not str")
        given: list[str | None] = list(ids) if ids is not None else [None] * len(texts)
        final_ids = [item if item else str(uuid.uuid4()) for item in given]
        if not texts:
            return []
        vectors = np.asarray(self._embedding.embed_documents(texts), dtype=np.float32)
        with self._lock:
            if self._index is None:
                self._index = VectorIndex(vectors.shape[1], factory=self._factory, embedder=_describe(self._embedding))
            return self._index.upsert(final_ids, vectors, texts, metadatas)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by id; unknown ids are ignored. ``delete()`` with no ids empties the store."""
        with self._lock:
            if self._index is None:
                return True
            self._index.delete(self._index.ids if ids is None else ids)
        return True

    # ------------------------------------------------------------------ reads
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents for the ids that exist, in the order asked."""
        with self._lock:
            if self._index is None:
                return []
            return [
                Document(id=r.id, page_content=r.text or "", metadata=dict(r.metadata)) for r in self._index.get(ids)
            ]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """``(document, cosine similarity)`` pairs, most similar first."""
        with self._lock:
            if self._index is None or len(self._index) == 0:
                return []
            hits = self._index.search(np.asarray(embedding, dtype=np.float32), k, filter=filter)[0]
        return [(_document(hit), hit.score) for hit in hits]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter=filter)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter)]

    def similarity_search(self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Diverse results: MMR over the ``fetch_k`` nearest, with the stored vectors."""
        with self._lock:
            if self._index is None or len(self._index) == 0:
                return []
            hits = self._index.search(np.asarray(embedding, dtype=np.float32), max(fetch_k, k), filter=filter)[0]
            candidates = self._index.vectors([hit.id for hit in hits])
        if not hits:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32), candidates.tolist(), lambda_mult=lambda_mult, k=min(k, len(hits))
        )
        return [_document(hits[i]) for i in chosen]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self._embedding.embed_query(query), k, fetch_k, lambda_mult, filter=filter
        )

    def as_retriever(self, **kwargs: Any) -> KVFaissRetriever:
        """A retriever over this store (``search_type``, ``search_kwargs`` or just ``k``)."""
        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return KVFaissRetriever(vectorstore=self, tags=tags, **kwargs)

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        factory: str = "Flat",
        **kwargs: Any,
    ) -> KVFaissVectorStore:
        store = cls(embedding, factory=factory)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def save_local(self, folder_path: str | Path) -> None:
        """Write the index atomically (FAISS file + JSON; see ``kvembed_rag.retrieval.vector_index``)."""
        with self._lock:
            if self._index is None:
                raise ValueError("nothing to save: the store is empty and has no dimension yet; add texts first")
            self._index.save(folder_path)

    @classmethod
    def load_local(cls, folder_path: str | Path, embeddings: Embeddings, **kwargs: Any) -> KVFaissVectorStore:
        """Read an index written by :meth:`save_local`. Safe on untrusted folders: nothing is unpickled.

        Raises ``EmbedderMismatchError`` when ``embeddings`` is a ``KVEmbeddings`` other than the one that
        built the index, ``IndexCorruptError`` when files are missing, truncated or inconsistent.
        """
        kwargs.pop("allow_dangerous_deserialization", None)  # accepted for drop-in use, never needed
        return cls(embeddings, VectorIndex.load(folder_path, embedder=_describe(embeddings)))
