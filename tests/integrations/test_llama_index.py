"""KVEmbedding in LlamaIndex: contract, async, pickling, IngestionPipeline workers, FAISS store, persistence."""

from __future__ import annotations

import asyncio
import pickle
import time

import faiss
import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.ingestion import IngestionPipeline
from llama_index.embeddings.kvembed import KVEmbedding
from llama_index.vector_stores.faiss import FaissVectorStore

TEXTS = [
    "KV-Embedding re-routes the final token's key and value as a prefix.",
    "FAISS searches dense vectors by inner product.",
    "Meeting transcripts are long documents with many speakers.",
]


@pytest.fixture(scope="module")
def embed_model(checkpoints) -> KVEmbedding:
    return KVEmbedding(model_name=str(checkpoints["llama"]))


def test_contract(embed_model):
    assert KVEmbedding.class_name() == "KVEmbedding"
    assert embed_model.embed_batch_size == 32
    query = embed_model.get_query_embedding("which token?")
    text = embed_model.get_text_embedding("which token?")
    batch = embed_model.get_text_embedding_batch(TEXTS)
    assert isinstance(query, list) and isinstance(query[0], float) and len(query) == 64
    assert not np.allclose(query, text)  # queries and documents use different prompts
    assert len(batch) == 3 and all(isinstance(v[0], float) for v in batch)
    np.testing.assert_allclose(batch[0], embed_model.get_text_embedding(TEXTS[0]), atol=1e-5)


def test_unknown_options_are_refused_and_load_options_reach_the_config(checkpoints, embed_model):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="model"):
        KVEmbedding(model=str(checkpoints["llama"]))  # LangChain's spelling: refused, not a silent default model
    model = KVEmbedding(model_name=str(checkpoints["llama"]), attn_implementation="eager", revision=None)
    assert model.config.attn_implementation == "eager" and model.config.trust_remote_code is False
    assert model.config.model == embed_model.config.model


def test_batch_method_is_one_call(embed_model, monkeypatch):
    calls = []
    original = embed_model.embedder.encode_documents
    monkeypatch.setattr(embed_model.embedder, "encode_documents", lambda t, **k: calls.append(len(t)) or original(t))
    embed_model.get_text_embedding_batch(TEXTS * 4)
    assert calls == [12]  # not twelve calls of one text


async def test_async_does_not_block_the_loop(embed_model):
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    vectors = await embed_model.aget_text_embedding_batch(TEXTS * 30)
    query = await embed_model.aget_query_embedding("which token?")
    task.cancel()
    assert len(vectors) == 90 and len(query) == 64
    assert ticks > 3  # the loop kept running while the model worked


def test_pickle_round_trip_is_small_and_works(embed_model):
    blob = pickle.dumps(embed_model)
    assert len(blob) < 20_000  # no model weights inside
    clone = pickle.loads(blob)
    assert clone.model_name == embed_model.model_name
    np.testing.assert_allclose(clone.get_query_embedding("x"), embed_model.get_query_embedding("x"), atol=1e-6)


def test_ingestion_pipeline_with_two_workers(embed_model):
    documents = [Document(text=" ".join([t] * 3), doc_id=f"d{i}") for i, t in enumerate(TEXTS * 2)]
    # no SentenceSplitter here: in a spawned worker it re-creates its default tokenizer, which downloads
    # tiktoken's vocabulary (a LlamaIndex behaviour that fails offline, and hangs the pool)
    pipeline = IngestionPipeline(transformations=[embed_model])
    start = time.perf_counter()
    nodes = pipeline.run(documents=documents, num_workers=2)
    assert time.perf_counter() - start < 300
    assert len(nodes) >= len(documents)
    expected = embed_model.get_text_embedding(nodes[0].get_content(metadata_mode="embed"))
    np.testing.assert_allclose(nodes[0].embedding, expected, atol=1e-5)


def test_vector_store_index_with_faiss_and_persistence(embed_model, tmp_path):
    store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(64))
    context = StorageContext.from_defaults(vector_store=store)
    index = VectorStoreIndex.from_documents(
        [Document(text=t, doc_id=f"d{i}") for i, t in enumerate(TEXTS)],
        storage_context=context,
        embed_model=embed_model,
    )
    hits = index.as_retriever(similarity_top_k=2).retrieve(TEXTS[1])
    assert len(hits) == 2 and hits[0].score >= hits[1].score  # inner product: higher is more similar
    assert hits[0].node.get_content() == TEXTS[1]
    index.storage_context.persist(persist_dir=str(tmp_path))
    reloaded_store = FaissVectorStore.from_persist_dir(str(tmp_path))
    context = StorageContext.from_defaults(vector_store=reloaded_store, persist_dir=str(tmp_path))
    reloaded = load_index_from_storage(context, embed_model=embed_model)
    again = reloaded.as_retriever(similarity_top_k=2).retrieve(TEXTS[1])
    assert [h.node.node_id for h in again] == [h.node.node_id for h in hits]
    assert again[0].score == pytest.approx(hits[0].score, abs=1e-5)
