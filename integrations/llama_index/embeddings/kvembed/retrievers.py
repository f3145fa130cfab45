"""Document-level retrieval over chunked documents (each document once, found by its best node), and a retriever
over kvembed-rag's own index, dense or hybrid (dense + BM25)."""

from __future__ import annotations

from typing import Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeRelationship, NodeWithScore, QueryBundle, RelatedNodeInfo, TextNode

from kvembed_rag.retrieval.pipeline import best_per_document


def _document_key(item: NodeWithScore) -> str:
    return item.node.ref_doc_id or item.node.node_id


def best_node_per_document(nodes: list[NodeWithScore], top_n: int | None = None) -> list[NodeWithScore]:
    """Keep the highest-scoring node of each source document (``ref_doc_id``), best first."""
    ranked = sorted(nodes, key=lambda item: item.score if item.score is not None else float("-inf"), reverse=True)
    return best_per_document(ranked, _document_key, top_n)


class BestNodePerDocument(BaseNodePostprocessor):
    """A node postprocessor keeping one node, the best, per source document (``top_n`` documents)."""

    top_n: int | None = Field(default=None, description="documents to keep (None: all)")

    @classmethod
    def class_name(cls) -> str:
        return "BestNodePerDocument"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        return best_node_per_document(nodes, self.top_n)


class KVDocumentRetriever(BaseRetriever):
    """The ``top_k`` documents whose best node matches the query best.

    Wraps a node retriever (give it a generous ``similarity_top_k``: one long document can own many of the
    nearest nodes). With a ``docstore`` holding the original documents, each result is the whole document
    as a node with ``best_passage``, ``best_score`` and ``best_node_id`` in its metadata; without one, the
    best node of each document.

    Example:
        .. code-block:: python

            docstore = SimpleDocumentStore(); docstore.add_documents(documents)
            retriever = KVDocumentRetriever(index.as_retriever(similarity_top_k=50), top_k=3, docstore=docstore)
    """

    def __init__(self, retriever: BaseRetriever, top_k: int = 4, docstore: Any = None, **kwargs: Any) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be positive; got {top_k}")
        self._retriever = retriever
        self._top_k = top_k
        self._docstore = docstore
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        best = best_node_per_document(self._retriever.retrieve(query_bundle), self._top_k)
        if self._docstore is None:
            return best
        results = []
        for item in best:
            document = self._docstore.get_document(_document_key(item), raise_error=False)
            if document is None:
                results.append(item)
                continue
            metadata = {
                **document.metadata,
                "best_passage": item.node.get_content(),
                "best_score": item.score,
                "best_node_id": item.node.node_id,
                "best_start_char_idx": getattr(item.node, "start_char_idx", None),
            }
            node = TextNode(id_=document.doc_id, text=document.get_content(), metadata=metadata)
            results.append(NodeWithScore(node=node, score=item.score))
        return results


class KVIndexRetriever(BaseRetriever):
    """Nodes retrieved from kvembed-rag's own FAISS index, dense or hybrid (dense + BM25 over the node texts).

    A thin adapter: the index, its BM25 store, the fusion and persistence are the core's
    (:class:`kvembed_rag.retrieval.VectorIndex`, ``search_hybrid``). Wrap it in :class:`KVDocumentRetriever`
    for whole documents by their best node.

    Example:
        .. code-block:: python

            nodes = KVTokenNodeParser(embed_model).get_nodes_from_documents(documents)
            retriever = KVIndexRetriever.from_nodes(nodes, embed_model, hybrid=True, similarity_top_k=5)
            retriever.persist("my-index")  # later: KVIndexRetriever.from_persist_dir("my-index", embed_model)
    """

    def __init__(
        self, index: Any, embed_model: Any, similarity_top_k: int = 4, hybrid: Any = None, **kwargs: Any
    ) -> None:
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be positive; got {similarity_top_k}")
        if hybrid is not None and hybrid is not False:
            index.enable_hybrid(hybrid)
        self._index = index
        self._embed_model = embed_model
        self._top_k = similarity_top_k
        self._dense_only = hybrid is False
        super().__init__(**kwargs)

    @classmethod
    def from_nodes(
        cls,
        nodes: list[Any],
        embed_model: Any,
        *,
        similarity_top_k: int = 4,
        hybrid: Any = None,
        child_tokens: int | None = 0,
        **kwargs: Any,
    ) -> KVIndexRetriever:
        """Embed ``nodes`` (their text as documents) into a new index; ``hybrid``: also BM25, with that fusion.
        ``child_tokens`` (small-to-big, e.g. ``kvembed_rag.CHILD_TOKENS`` = 256; default 0: one vector per node): a
        node longer than that is embedded as its pieces and scored by the best, while BM25 and the results keep the
        whole node."""
        from kvembed_rag.retrieval.chunking import pieces_of_texts
        from kvembed_rag.retrieval.vector_index import VectorIndex

        if not nodes:
            raise ValueError("from_nodes needs at least one node")
        texts = [node.get_content() for node in nodes]
        pieces = pieces_of_texts(getattr(embed_model, "embedder", None), texts, child_tokens)
        vectors = np.asarray(embed_model.get_text_embedding_batch([p for each in pieces for p in each]), np.float32)
        embedder = getattr(embed_model, "embedder", None)
        index = VectorIndex(len(vectors[0]), embedder=embedder.describe() if embedder is not None else None)
        if hybrid is not None and hybrid is not False:
            index.enable_hybrid(hybrid)
        metadatas = [{**node.metadata, "ref_doc_id": node.ref_doc_id} for node in nodes]
        counts = [len(each) for each in pieces]
        index.upsert([node.node_id for node in nodes], vectors, texts, metadatas, vector_counts=counts)
        return cls(index, embed_model, similarity_top_k, **kwargs)

    @classmethod
    def from_persist_dir(cls, folder: str, embed_model: Any, **kwargs: Any) -> KVIndexRetriever:
        """Load an index saved by :meth:`persist` (checked: checksums, the BM25 store, the embedder)."""
        from kvembed_rag.retrieval.vector_index import VectorIndex

        embedder = getattr(embed_model, "embedder", None)
        index = VectorIndex.load(folder, embedder=embedder.describe() if embedder is not None else None)
        return cls(index, embed_model, **kwargs)

    def persist(self, folder: str) -> None:
        self._index.save(folder)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        vector = self._embed_model.get_query_embedding(query_bundle.query_str)
        text = None if self._dense_only else query_bundle.query_str
        hits = self._index.search_query(vector, text, self._top_k)[0]
        results = []
        for hit in hits:
            metadata = dict(hit.metadata)
            parent = metadata.pop("ref_doc_id", None)
            node = TextNode(id_=hit.id, text=hit.text or "", metadata=metadata)
            if parent:
                node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=parent)
            results.append(NodeWithScore(node=node, score=hit.score))
        return results
