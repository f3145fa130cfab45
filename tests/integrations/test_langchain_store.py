"""KVFaissVectorStore beyond the standard suite: persistence, embedder checks, filters, MMR, async, LCEL."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_kvembed import KVEmbeddings, KVFaissRetriever, KVFaissVectorStore

from kvembed_rag import EmbedderMismatchError, IndexCorruptError

DOCS = [
    Document(page_content="KV-Embedding re-routes the final token's key and value.", metadata={"topic": "method"}),
    Document(page_content="FAISS searches dense vectors by inner product.", metadata={"topic": "index"}),
    Document(page_content="Inner product on unit vectors is cosine similarity.", metadata={"topic": "index"}),
    Document(page_content="LangChain composes retrievers, prompts and models.", metadata={"topic": "framework"}),
]


@pytest.fixture(scope="module")
def embeddings(checkpoints) -> KVEmbeddings:
    return KVEmbeddings(model=str(checkpoints["llama"]))


@pytest.fixture
def store(embeddings) -> KVFaissVectorStore:
    return KVFaissVectorStore.from_documents(DOCS, embeddings, ids=["m", "i1", "i2", "f"])


def test_embeddings_return_python_floats(embeddings):
    vectors = embeddings.embed_documents(["a", "b"])
    assert type(vectors[0][0]) is float and len(vectors) == 2
    assert type(embeddings.embed_query("a")[0]) is float
    assert KVEmbeddings(model=embeddings.model).embedder is embeddings.embedder  # one load per process


def test_embeddings_take_the_load_options_and_refuse_unknown_ones(embeddings):
    from pydantic import ValidationError

    eager = KVEmbeddings(model=embeddings.model, attn_implementation="eager", revision=None)
    assert eager.config.attn_implementation == "eager" and eager.config.trust_remote_code is False
    with pytest.raises(ValidationError, match="model_name"):
        KVEmbeddings(model_name=embeddings.model)  # LlamaIndex's spelling


def test_scores_filters_and_relevance(store):
    scored = store.similarity_search_with_score(DOCS[1].page_content, k=4)
    assert scored[0][0].id == "i1" and scored[0][1] == pytest.approx(
        store.similarity_search_with_score(DOCS[1].page_content, k=1)[0][1]
    )
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    only_index = store.similarity_search("vectors", k=4, filter={"topic": "index"})
    assert {d.id for d in only_index} == {"i1", "i2"}
    relevance = store.similarity_search_with_relevance_scores("vectors", k=2)
    assert all(0.0 <= r <= 1.0 for _, r in relevance)


def test_mmr_returns_k_distinct_documents(store):
    docs = store.max_marginal_relevance_search("inner product vectors", k=3, fetch_k=4, lambda_mult=0.3)
    assert len(docs) == 3 and len({d.id for d in docs}) == 3
    retriever = store.as_retriever(search_type="mmr", k=2)
    assert isinstance(retriever, KVFaissRetriever) and len(retriever.invoke("vectors")) == 2


def test_save_and_load_without_pickle(store, embeddings, tmp_path):
    store.save_local(tmp_path / "idx")
    assert not list((tmp_path / "idx").glob("*.pkl"))
    again = KVFaissVectorStore.load_local(tmp_path / "idx", embeddings)
    assert [d.id for d in again.similarity_search("vectors", k=4)] == [
        d.id for d in store.similarity_search("vectors", k=4)
    ]
    # drop-in for langchain_community's FAISS: the flag is accepted and ignored
    KVFaissVectorStore.load_local(tmp_path / "idx", embeddings, allow_dangerous_deserialization=True)


def test_loading_with_another_embedder_is_refused(store, checkpoints, tmp_path):
    store.save_local(tmp_path / "idx")
    with pytest.raises(EmbedderMismatchError, match="method"):
        KVFaissVectorStore.load_local(tmp_path / "idx", KVEmbeddings(model=str(checkpoints["llama"]), method="mean"))
    with pytest.raises(EmbedderMismatchError, match="model"):
        KVFaissVectorStore.load_local(tmp_path / "idx", KVEmbeddings(model=str(checkpoints["qwen3"])))


def test_corrupt_folder_is_a_clear_error(store, embeddings, tmp_path):
    store.save_local(tmp_path / "idx")
    for faiss_file in (tmp_path / "idx").glob("index-*.faiss"):
        faiss_file.write_bytes(b"garbage")
    with pytest.raises(IndexCorruptError):
        KVFaissVectorStore.load_local(tmp_path / "idx", embeddings)


def test_empty_store_cannot_be_saved(embeddings, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        KVFaissVectorStore(embeddings).save_local(tmp_path / "x")


def test_bad_input_is_rejected_before_anything_changes(store):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        store.add_texts(["fine", None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="metadatas"):
        store.add_texts(["a", "b"], metadatas=[{}])
    assert len(store.index) == 4


async def test_async_paths(store):
    ids = await store.aadd_texts(["async text one", "async text two"], ids=["x1", "x2"])
    assert ids == ["x1", "x2"]
    results = await asyncio.gather(*[store.asimilarity_search("async text", k=2) for _ in range(8)])
    assert all(len(r) == 2 for r in results)
    await store.adelete(["x1", "x2"])
    assert store.get_by_ids(["x1"]) == []


def test_lcel_rag_chain(store):
    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = {
        "context": store.as_retriever(k=2) | RunnableLambda(lambda d: "\n".join(x.page_content for x in d)),
        "question": RunnablePassthrough(),
    } | prompt
    rendered = chain.invoke("what does FAISS do?").to_string()
    assert "Question: what does FAISS do?" in rendered and rendered.count("\n") >= 3


def test_other_embeddings_work_without_a_description(tmp_path):
    store = KVFaissVectorStore.from_texts(["a", "b", "c"], DeterministicFakeEmbedding(size=6))
    store.save_local(tmp_path / "fake")
    assert len(KVFaissVectorStore.load_local(tmp_path / "fake", DeterministicFakeEmbedding(size=6)).index) == 3
