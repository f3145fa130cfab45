"""LangChain's standard suites, unmodified, against a hybrid (dense + BM25) KVFaissVectorStore and its retriever;
and the hybrid switch through the store, save/load and the retriever."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore
from langchain_kvembed import KVEmbeddings, KVFaissRetriever, KVFaissVectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests

from kvembed_rag.retrieval.lexical import HybridConfig

DOCUMENTS = [
    Document(page_content="KV-Embedding re-routes the final token's key and value.", id="kv"),
    Document(page_content="FAISS searches dense vectors by inner product.", id="faiss"),
    Document(page_content="LangChain chains retrievers and prompts.", id="langchain"),
    Document(page_content="Meeting transcripts are long documents about budgets.", id="meeting"),
]


class TestKVFaissVectorStoreHybrid(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        store = KVFaissVectorStore(embedding=self.get_embeddings(), hybrid="rrf:0.5")
        try:
            yield store
        finally:
            store.delete()


@pytest.fixture(scope="class")
def tiny_model(request: pytest.FixtureRequest, checkpoints) -> None:
    request.cls.model_path = str(checkpoints["llama"])


@pytest.mark.usefixtures("tiny_model")
class TestKVFaissRetrieverHybrid(RetrieversIntegrationTests):
    model_path: str

    @property
    def retriever_constructor(self) -> type[KVFaissRetriever]:
        return KVFaissRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        store = KVFaissVectorStore.from_documents(DOCUMENTS, KVEmbeddings(model=self.model_path), hybrid=True)
        return {"vectorstore": store}

    @property
    def retriever_query_example(self) -> str:
        return "which token is re-routed?"


def test_hybrid_store_finds_words_and_survives_save_load(checkpoints, tmp_path: Path) -> None:
    embeddings = KVEmbeddings(model=str(checkpoints["llama"]))
    store = KVFaissVectorStore.from_documents(DOCUMENTS, embeddings, hybrid="weighted:1")
    assert [d.id for d in store.similarity_search("budgets meeting", k=1)] == ["meeting"]
    assert store.as_retriever(k=1).invoke("inner product vectors")[0].id == "faiss"
    store.save_local(tmp_path)
    loaded = KVFaissVectorStore.load_local(tmp_path, embeddings)
    assert loaded.index is not None and loaded.index.hybrid == HybridConfig("weighted", 1.0)
    assert [d.id for d in loaded.similarity_search("budgets meeting", k=1)] == ["meeting"]
    # a dense store made hybrid at load time (BM25 over its stored texts)
    dense = KVFaissVectorStore.from_documents(DOCUMENTS, embeddings)
    dense.save_local(tmp_path / "dense")
    made = KVFaissVectorStore.load_local(tmp_path / "dense", embeddings, hybrid="weighted:1")
    assert [d.id for d in made.similarity_search("prompts retrievers", k=1)] == ["langchain"]
    # feedback passes through to the index and survives the save
    fed = KVFaissVectorStore.from_documents(DOCUMENTS, embeddings, hybrid="weighted:0.5+feedback:2")
    assert len(fed.similarity_search("budgets meeting", k=3)) == 3
    fed.save_local(tmp_path / "fed")
    fed_index = KVFaissVectorStore.load_local(tmp_path / "fed", embeddings).index
    assert fed_index is not None and fed_index.hybrid == HybridConfig("weighted", 0.5, feedback=2)
    # weight 0 without feedback: the dense order
    zero = KVFaissVectorStore.from_documents(DOCUMENTS, embeddings, hybrid="rrf:0+feedback:0")
    for query in ("budgets", "token key value", "vectors"):
        assert [d.id for d in zero.similarity_search(query, k=4)] == [d.id for d in dense.similarity_search(query, k=4)]
