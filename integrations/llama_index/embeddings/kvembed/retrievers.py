"""Document-level retrieval over chunked documents: each document once, found by its best node."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

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
