"""LangChain's standard suites, unmodified, against KVEmbeddings, KVFaissVectorStore and its retriever."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore
from langchain_kvembed import KVEmbeddings, KVFaissRetriever, KVFaissVectorStore
from langchain_tests.integration_tests import (
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)
from langchain_tests.unit_tests import EmbeddingsUnitTests


@pytest.fixture(scope="class")
def tiny_model(request: pytest.FixtureRequest, checkpoints) -> None:
    request.cls.model_path = str(checkpoints["llama"])


@pytest.mark.usefixtures("tiny_model")
class TestKVEmbeddingsUnit(EmbeddingsUnitTests):
    model_path: str

    @property
    def embeddings_class(self) -> type[KVEmbeddings]:
        return KVEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": self.model_path}


@pytest.mark.usefixtures("tiny_model")
class TestKVEmbeddingsIntegration(EmbeddingsIntegrationTests):
    model_path: str

    @property
    def embeddings_class(self) -> type[KVEmbeddings]:
        return KVEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": self.model_path}


class TestKVFaissVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        store = KVFaissVectorStore(embedding=self.get_embeddings())
        try:
            yield store
        finally:
            store.delete()


class TestKVFaissVectorStoreHNSW(VectorStoreIntegrationTests):
    """The same suite on an approximate (HNSW) index, whose deletes are tombstones."""

    @pytest.fixture
    def vectorstore(self) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        yield KVFaissVectorStore(embedding=self.get_embeddings(), factory="HNSW32")


@pytest.mark.usefixtures("tiny_model")
class TestKVFaissRetriever(RetrieversIntegrationTests):
    model_path: str

    @property
    def retriever_constructor(self) -> type[KVFaissRetriever]:
        return KVFaissRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        store = KVFaissVectorStore.from_documents(
            [
                Document(page_content="KV-Embedding re-routes the final token's key and value."),
                Document(page_content="FAISS searches dense vectors by inner product."),
                Document(page_content="LangChain chains retrievers and prompts."),
                Document(page_content="Meeting transcripts are long documents."),
            ],
            KVEmbeddings(model=self.model_path),
        )
        return {"vectorstore": store}

    @property
    def retriever_query_example(self) -> str:
        return "which token is re-routed?"
