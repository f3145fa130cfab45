"""``KVFaissVectorStore``: LangChain's ``VectorStore`` over kvembed-rag's FAISS index.

Differences from ``langchain_community.vectorstores.FAISS`` that users notice: upsert by id (adding an
existing id replaces it), deleting unknown ids is not an error, ``get_by_ids`` works, the distance is
always cosine (inner product on normalised vectors, higher is better) and survives a reload, and
``save_local``/``load_local`` use FAISS's own format plus JSON: no pickle, no
``allow_dangerous_deserialization`` flag. An index saved with a ``KVEmbeddings`` records the embedder's
description, and loading it with a different model or method raises ``EmbedderMismatchError``.
"""

from __future__ import annotations

import json
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

from kvembed_rag._io import write_bytes_atomically
from kvembed_rag.retrieval.chunking import pieces_of_texts
from kvembed_rag.retrieval.filters import Filter
from kvembed_rag.retrieval.lexical import HybridConfig
from kvembed_rag.retrieval.pipeline import best_per_document
from kvembed_rag.retrieval.vector_index import Hit, VectorIndex
from langchain_kvembed.retrievers import KVFaissRetriever


def _describe(embedding: Embeddings) -> dict[str, Any] | None:
    """The core embedder's describe() when the embeddings are ours; None for any other Embeddings."""
    embedder = getattr(embedding, "embedder", None)
    describe = getattr(embedder, "describe", None)
    return describe() if callable(describe) else None


def _child_tokens_for(index: VectorIndex | None, requested: int | None) -> int:
    """The piece size a store adds texts with: ``requested``, else what ``index`` records (0 when nothing); refused
    when the index records another, since one ranking would then mix one-vector and best-piece records."""
    recorded = int(((index.chunking if index is not None else None) or {}).get("child_tokens", 0) or 0)
    if requested is None or int(requested) == recorded:
        return recorded
    if index is not None:
        from kvembed_rag import ChunkingMismatchError

        raise ChunkingMismatchError(
            f"the index was built with child_tokens={recorded}; adding texts with child_tokens={requested} would mix "
            f"one-vector and best-piece records in one ranking. Leave child_tokens out (or pass {recorded}), or build "
            "a new store"
        )
    return int(requested)


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

    Hybrid retrieval (dense + BM25 over the stored texts, fused; see ``kvembed_rag.retrieval.lexical``):
    ``KVFaissVectorStore(embeddings, hybrid="rrf:0.5")`` or ``from_texts(..., hybrid=True)``; text searches
    (``similarity_search*``, the retrievers, parent search) then fuse, and scores are the fused scores. Searches
    by vector and MMR stay dense. The BM25 store is saved and checked with the index.

    Small-to-big (``child_tokens=kvembed_rag.CHILD_TOKENS``, i.e. 256; default: the given index's own, else 0, one
    vector per text): with
    ``KVEmbeddings`` a text longer than that is embedded as its pieces and scored by the best of them, while the
    search returns (and BM25 indexes) the whole text, as ``kvembed-rag index --child-tokens 256`` stores passages.
    The index records it (saved by ``save_local``), so a store over a saved index keeps adding texts that way;
    another value is refused (``ChunkingMismatchError``).
    """

    def __init__(
        self,
        embedding: Embeddings,
        index: VectorIndex | None = None,
        *,
        factory: str = "Flat",
        precision: str = "float32",
        hybrid: HybridConfig | dict[str, Any] | str | bool | None = None,
        child_tokens: int | None = None,
    ) -> None:
        self._embedding = embedding
        self._child_tokens = _child_tokens_for(index, child_tokens)
        self._hybrid = HybridConfig.parse(hybrid) or (index.hybrid if index is not None else None)
        if index is not None and self._hybrid is not None:
            index.enable_hybrid(self._hybrid)
        self._index = index
        self._factory = factory if index is None else index.factory
        self._precision = precision if index is None else index.precision
        self._lock = threading.RLock()
        self._parents: dict[str, Document] = {}  # documents added with split=True, by id (see add_documents)

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
        pieces = pieces_of_texts(getattr(self._embedding, "embedder", None), texts, self._child_tokens)
        vectors = np.asarray(self._embedding.embed_documents([p for each in pieces for p in each]), dtype=np.float32)
        with self._lock:
            if self._index is None:
                self._index = VectorIndex(
                    vectors.shape[1],
                    factory=self._factory,
                    embedder=_describe(self._embedding),
                    precision=self._precision,
                    hybrid=self._hybrid,
                    # saved in the manifest, so load_local adds new texts the same way (see load_local)
                    chunking={"child_tokens": int(self._child_tokens)} if self._child_tokens else None,
                )
            return self._index.upsert(final_ids, vectors, texts, metadatas, vector_counts=[len(p) for p in pieces])

    def add_documents(self, documents: list[Document], *, split: bool | Any = False, **kwargs: Any) -> list[str]:
        """Add documents; with ``split`` they are cut into chunks and retrievable as whole documents.

        ``split=True`` uses :class:`~langchain_kvembed.KVTokenTextSplitter` over this store's embeddings
        (chunks fit the embedder's window, prompt included); any LangChain ``TextSplitter`` works too. Each
        chunk is stored as ``<document id>#<n>`` with ``parent_id`` in its metadata; the document itself
        is kept (and saved by :meth:`save_local`) for :meth:`similarity_search_parents` and
        ``as_retriever(search_type="parent")``. Plain searches return the chunks. Re-adding a document id
        replaces its old chunks. Returns the documents' ids.
        """
        if not split:
            return super().add_documents(documents, **kwargs)
        splitter: Any = split
        if split is True:
            from langchain_kvembed.splitters import KVTokenTextSplitter

            splitter = KVTokenTextSplitter(self._embedding)
        ids = list(kwargs.pop("ids", None) or [None] * len(documents))
        if len(ids) != len(documents):
            raise ValueError(f"got {len(ids)} ids for {len(documents)} documents")
        parent_ids = [given or document.id or str(uuid.uuid4()) for given, document in zip(ids, documents, strict=True)]
        texts: list[str] = []
        metadatas: list[dict[str, Any]] = []
        chunk_ids: list[str] = []
        for parent_id, document in zip(parent_ids, documents, strict=True):
            for number, chunk in enumerate(splitter.split_documents([document])):
                texts.append(chunk.page_content)
                metadatas.append({**chunk.metadata, PARENT_KEY: parent_id, "chunk_index": number})
                chunk_ids.append(f"{parent_id}#{number}")
        with self._lock:
            self._delete_chunks_of(parent_ids)
            self.add_texts(texts, metadatas, ids=chunk_ids)
            for parent_id, document in zip(parent_ids, documents, strict=True):
                self._parents[parent_id] = Document(
                    id=parent_id, page_content=document.page_content, metadata=dict(document.metadata)
                )
        return parent_ids

    def _delete_chunks_of(self, parent_ids: list[str]) -> None:
        if self._index is None:
            return
        wanted = {item for item in parent_ids if item in self._parents}
        if wanted:
            self._index.delete([r.id for r in self._index.get(self._index.ids) if r.metadata.get(PARENT_KEY) in wanted])

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by id; unknown ids are ignored. ``delete()`` with no ids empties the store. A document
        added with ``split=True`` is deleted with all its chunks by its own id."""
        with self._lock:
            if self._index is None:
                self._parents.clear()
                return True
            if ids is None:
                self._parents.clear()
                self._index.delete(self._index.ids)
                return True
            self._delete_chunks_of(list(ids))
            for item in ids:
                self._parents.pop(item, None)
            self._index.delete(ids)
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
        """``(document, score)`` pairs, best first: the cosine, or on a hybrid store the fused score."""
        vector = self._embedding.embed_query(query)
        with self._lock:
            if self._index is None or len(self._index) == 0:
                return []
            hits = self._index.search_query(np.asarray(vector, dtype=np.float32), query, k, filter=filter)[0]
        return [(_document(hit), hit.score) for hit in hits]

    def similarity_search_parents(
        self,
        query: str,
        k: int = 4,
        filter: Filter | None = None,
        fetch_k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """The ``k`` documents whose best chunk matches ``query`` best (documents added with ``split=True``).

        Each result is the whole document with ``best_passage`` (that chunk's text), ``best_score``,
        ``best_chunk_index`` and ``best_start_index`` in its metadata; chunks of documents this store does
        not hold (plain ``add_texts``) are returned as themselves, and of an index ``kvembed-rag index`` built
        (it keeps passages, not whole documents) the best passage per document. ``fetch_k`` chunks are searched (default
        ``max(50, 10·k)``): one long document can own many of the nearest chunks.
        """
        hits = self.similarity_search_with_score(query, fetch_k or max(50, 10 * k), filter=filter)

        def document_of(hit: tuple[Document, float]) -> str:
            metadata = hit[0].metadata
            parent_id = metadata.get(PARENT_KEY)
            if isinstance(parent_id, str) and parent_id in self._parents:
                return parent_id
            core_document = metadata.get(CORE_DOCUMENT_KEY)  # an index `kvembed-rag index` built: its best passage
            return f"document:{core_document}" if isinstance(core_document, str) else f"chunk:{hit[0].id}"

        results: list[Document] = []
        for chunk, score in best_per_document(hits, document_of, k):
            key = document_of((chunk, score))
            if key not in self._parents:  # a plain chunk, or the best passage of a core index's document
                results.append(
                    Document(
                        id=chunk.id, page_content=chunk.page_content, metadata={**chunk.metadata, "best_score": score}
                    )
                )
            else:
                parent = self._parents[key]
                best = {
                    "best_passage": chunk.page_content,
                    "best_score": score,
                    "best_chunk_index": chunk.metadata.get("chunk_index"),
                    "best_start_index": chunk.metadata.get("start_index"),
                }
                results.append(
                    Document(id=parent.id, page_content=parent.page_content, metadata={**parent.metadata, **best})
                )
        return results

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
        hybrid: HybridConfig | dict[str, Any] | str | bool | None = None,
        **kwargs: Any,
    ) -> KVFaissVectorStore:
        store = cls(embedding, factory=factory, hybrid=hybrid, child_tokens=kwargs.pop("child_tokens", None))
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def save_local(self, folder_path: str | Path) -> None:
        """Write the index atomically (FAISS file + JSON; see ``kvembed_rag.retrieval.vector_index``)."""
        with self._lock:
            if self._index is None:
                raise ValueError("nothing to save: the store is empty and has no dimension yet; add texts first")
            # the parents travel as an attachment of the index: written and checksummed with it, committed by
            # the same manifest, so an interrupted save keeps the old pair and an edited file is refused on load
            folder = Path(folder_path)
            folder.mkdir(parents=True, exist_ok=True)
            staging = folder / f".{PARENTS_ATTACHMENT}-{uuid.uuid4().hex}.json"
            try:
                if self._parents:
                    _write_parents(staging, self._parents)
                    self._index.attach(PARENTS_ATTACHMENT, staging)
                else:
                    self._index.attachments.pop(PARENTS_ATTACHMENT, None)
                self._index.save(folder)
            finally:
                self._index.attachments.pop(PARENTS_ATTACHMENT, None)  # the staging file goes now
                staging.unlink(missing_ok=True)
            (folder / LEGACY_PARENTS_FILE).unlink(missing_ok=True)  # a store saved before: its file is superseded

    @classmethod
    def load_local(cls, folder_path: str | Path, embeddings: Embeddings, **kwargs: Any) -> KVFaissVectorStore:
        """Read an index written by :meth:`save_local`. Safe on untrusted folders: nothing is unpickled.

        Raises ``EmbedderMismatchError`` when ``embeddings`` is a ``KVEmbeddings`` other than the one that
        built the index, ``IndexCorruptError`` when files are missing, truncated or inconsistent.
        """
        kwargs.pop("allow_dangerous_deserialization", None)  # accepted for drop-in use, never needed
        index = VectorIndex.load(folder_path, embedder=_describe(embeddings))
        store = cls(  # hybrid=...: add BM25 or change fusion; child_tokens: the index's own unless given
            embeddings, index, hybrid=kwargs.pop("hybrid", None), child_tokens=kwargs.pop("child_tokens", None)
        )
        # verified by VectorIndex.load against the manifest's checksum; a store saved before parents were an
        # attachment has an unchecked parents.json
        attached = index.attachments.pop(PARENTS_ATTACHMENT, None)
        store._parents = _read_parents(attached or Path(folder_path) / LEGACY_PARENTS_FILE)
        return store


PARENT_KEY = "parent_id"
CORE_DOCUMENT_KEY = "document"  # the document id `kvembed-rag index` / build_index store on each passage
PARENTS_ATTACHMENT = "parents"
LEGACY_PARENTS_FILE = "parents.json"


def _write_parents(path: Path, parents: dict[str, Document]) -> None:
    payload = [{"id": key, "page_content": d.page_content, "metadata": d.metadata} for key, d in parents.items()]
    write_bytes_atomically(path, json.dumps(payload, ensure_ascii=False).encode("utf-8"))


def _read_parents(path: Path) -> dict[str, Document]:
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return {
            str(r["id"]): Document(id=str(r["id"]), page_content=str(r["page_content"]), metadata=dict(r["metadata"]))
            for r in rows
        }
    except (ValueError, KeyError, TypeError) as exc:
        from kvembed_rag import IndexCorruptError

        raise IndexCorruptError(f"{path} is not a valid parent-document file ({exc})") from exc
