"""Long documents through LlamaIndex alone: token-budget node parser, document-level retrieval, caching."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.ingestion import IngestionCache, IngestionPipeline
from llama_index.core.schema import MetadataMode, NodeRelationship
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.embeddings.kvembed import BestNodePerDocument, KVDocumentRetriever, KVEmbedding, KVTokenNodeParser
from long_document import NEEDLE, long_document

from kvembed_rag import PASSAGE_TOKENS, passage_input_tokens

#: identical prompts for both roles: a query equal to a node's text gets that node's vector exactly, so the
#: planted passage is found even by a random tiny model (what is tested here is the plumbing)
SAME_PROMPTS = {"document": "Passage: {text}", "query": "Passage: {text}"}


@pytest.fixture(scope="module")
def embed_model(checkpoints) -> KVEmbedding:
    return KVEmbedding(model_name=str(checkpoints["llama"]), prompts=SAME_PROMPTS, max_length=1024)


def test_node_parser_budget_counts_prompt_and_metadata(embed_model):
    embedder = embed_model.embedder
    parser = KVTokenNodeParser(embed_model, chunk_overlap=16)
    text = " ".join(f"sentence number {i} about rivers and lanterns." for i in range(400))
    document = Document(text=text, metadata={"title": "A fairly long title about rivers " * 4})
    nodes = parser.get_nodes_from_documents([document])
    assert len(nodes) > 3
    for node in nodes:
        assert node.ref_doc_id == document.doc_id
        assert NodeRelationship.SOURCE in node.relationships
        encoded = embedder.tokenize([node.get_content(metadata_mode=MetadataMode.EMBED)])[0]
        assert encoded.truncated_by == 0  # prompt + metadata + text fit one input
        assert text[node.start_char_idx : node.end_char_idx] == node.get_content()
    assert parser.split_text("short") == ["short"]
    with pytest.raises(TypeError, match="KVEmbedding or KVEmbedder"):
        KVTokenNodeParser(object())


def test_node_parser_default_is_the_passage_size_capped_at_max_length(embed_model):
    embedder = embed_model.embedder  # max_length 1,024 here: below PASSAGE_TOKENS, so the window caps the nodes
    text = " ".join(f"sentence number {i} about rivers and lanterns." for i in range(400))
    default = KVTokenNodeParser(embed_model, chunk_overlap=0).split_text(text)
    sized = KVTokenNodeParser(embed_model, chunk_size=passage_input_tokens(embedder), chunk_overlap=0).split_text(text)
    smaller = KVTokenNodeParser(embed_model, chunk_size=256, chunk_overlap=0).split_text(text)
    counts = [len(embedder.token_offsets(chunk)) for chunk in default]
    assert default == sized and PASSAGE_TOKENS > embedder.max_length >= max(counts) > embedder.max_length - 64
    assert len(smaller) > len(default)


def test_30k_token_document_finds_the_planted_passage_near_its_end(embed_model):
    text, needle_at = long_document(30_000, lambda t: len(embed_model.embedder.token_offsets(t)))
    long_doc = Document(text=text, doc_id="long")
    short_doc = Document(text="a short unrelated note", doc_id="short")
    parser = KVTokenNodeParser(embed_model, chunk_overlap=32)
    index = VectorStoreIndex.from_documents([long_doc, short_doc], embed_model=embed_model, transformations=[parser])
    nodes = list(index.docstore.docs.values())
    needle_node = next(node for node in nodes if NEEDLE in node.get_content())
    assert needle_node.ref_doc_id == "long" and needle_node.start_char_idx > 0.9 * len(text)
    query = needle_node.get_content()
    # node level: the planted passage is the top node
    top = index.as_retriever(similarity_top_k=1).retrieve(query)[0]
    assert top.node.node_id == needle_node.node_id
    # document level: each document once, by its best node; with a docstore, the whole document
    base = index.as_retriever(similarity_top_k=100)  # more than the nodes: every document is a candidate
    deduped = BestNodePerDocument(top_n=2).postprocess_nodes(base.retrieve(query))
    assert [item.node.ref_doc_id for item in deduped] == ["long", "short"]
    docstore = SimpleDocumentStore()
    docstore.add_documents([long_doc, short_doc])
    best = KVDocumentRetriever(base, top_k=1, docstore=docstore).retrieve(query)
    assert len(best) == 1 and best[0].node.node_id == "long" and best[0].node.get_content() == text
    assert NEEDLE in best[0].node.metadata["best_passage"]
    assert best[0].node.metadata["best_start_char_idx"] <= needle_at
    assert KVDocumentRetriever(base, top_k=2).retrieve(query)[0].node.node_id == needle_node.node_id


def test_ingestion_cache_hits_and_changed_configuration_misses(checkpoints, monkeypatch):
    documents = [
        Document(text="first text about rivers", doc_id="a"),
        Document(text="second about lanterns", doc_id="b"),
    ]
    cache = IngestionCache()
    calls = []
    original = KVEmbedding._get_text_embeddings

    def counting(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(KVEmbedding, "_get_text_embeddings", counting)

    def pipeline(**options) -> IngestionPipeline:
        model = KVEmbedding(model_name=str(checkpoints["llama"]), **options)
        return IngestionPipeline(transformations=[KVTokenNodeParser(model), model], cache=cache)

    first = pipeline().run(documents=documents)
    assert calls == [2] and all(node.embedding for node in first)
    second = pipeline().run(documents=documents)
    assert calls == [2]  # served from the cache
    assert [n.embedding for n in second] == [n.embedding for n in first]
    changed = pipeline(bias=-2.0).run(documents=documents)
    assert calls == [2, 2]  # a changed configuration is a different transformation hash
    assert [n.embedding for n in changed] != [n.embedding for n in first]
    model = KVEmbedding(model_name=str(checkpoints["llama"]))
    assert model.to_dict()["fingerprint"] == model.embedder.fingerprint


@pytest.mark.parametrize("script", ["langchain_long_document.py", "llamaindex_long_document.py"])
def test_long_document_examples_run(script, checkpoints, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, f"examples/{script}", "--model", str(checkpoints["llama"]), "--data", str(tmp_path)]
    command += ["--paragraphs", "12", "--chunk-tokens", "256"]  # the generated fallback document, kept small
    env = {**os.environ, "KVEMBED_CACHE": str(tmp_path), "PYTHONPATH": f"{root}{os.pathsep}{root / 'integrations'}"}
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best passage on the last page:" in result.stdout
    assert ("chunks:" if script.startswith("langchain") else "nodes:") in result.stdout
