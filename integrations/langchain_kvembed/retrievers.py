"""``KVFaissRetriever``: the store's retriever, with ``k`` as a constructor argument."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStoreRetriever
from pydantic import model_validator


class KVFaissRetriever(VectorStoreRetriever):
    """A ``VectorStoreRetriever`` that also takes ``k`` directly: ``KVFaissRetriever(vectorstore=s, k=5)``.

    ``search_type`` is ``"similarity"`` (default), ``"mmr"``, ``"similarity_score_threshold"`` or
    ``"parent"`` (whole documents ranked by their best chunk, see
    ``KVFaissVectorStore.similarity_search_parents``); ``k`` at ``invoke`` time (``retriever.invoke(q, k=3)``)
    overrides both.
    """

    k: int = 4
    allowed_search_types: ClassVar[Collection[str]] = ("similarity", "similarity_score_threshold", "mmr", "parent")

    @model_validator(mode="before")
    @classmethod
    def _k_into_search_kwargs(cls, values: Any) -> Any:
        if isinstance(values, dict):
            search_kwargs = dict(values.get("search_kwargs") or {})
            if "k" in values:
                search_kwargs.setdefault("k", values["k"])
            values = {**values, "search_kwargs": search_kwargs}
        return values

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        if self.search_type == "parent":
            search = getattr(self.vectorstore, "similarity_search_parents", None)
            if search is None:
                raise ValueError(
                    f"search_type='parent' needs a KVFaissVectorStore; got {type(self.vectorstore).__name__}"
                )
            return list(search(query, **(self.search_kwargs | kwargs)))
        return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)


class KVParentDocumentRetriever(KVFaissRetriever):
    """Whole documents, each found by its best-matching chunk (``search_type="parent"`` by default).

    Index with ``store.add_documents(documents, split=True)``; each result is the original document with
    ``best_passage``, ``best_score``, ``best_chunk_index`` and ``best_start_index`` in its metadata.
    """

    search_type: str = "parent"
