"""``KVFaissRetriever``: the store's retriever, with ``k`` as a constructor argument."""

from __future__ import annotations

from typing import Any

from langchain_core.vectorstores import VectorStoreRetriever
from pydantic import model_validator


class KVFaissRetriever(VectorStoreRetriever):
    """A ``VectorStoreRetriever`` that also takes ``k`` directly: ``KVFaissRetriever(vectorstore=s, k=5)``.

    ``search_type`` is ``"similarity"`` (default), ``"mmr"`` or ``"similarity_score_threshold"``; ``k`` at
    ``invoke`` time (``retriever.invoke(q, k=3)``) overrides both.
    """

    k: int = 4

    @model_validator(mode="before")
    @classmethod
    def _k_into_search_kwargs(cls, values: Any) -> Any:
        if isinstance(values, dict):
            search_kwargs = dict(values.get("search_kwargs") or {})
            if "k" in values:
                search_kwargs.setdefault("k", values["k"])
            values = {**values, "search_kwargs": search_kwargs}
        return values
