"""KVIndexRetriever: LlamaIndex nodes in kvembed-rag's index, dense or hybrid, persisted and checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core.schema import TextNode
from llama_index.embeddings.kvembed import KVDocumentRetriever, KVEmbedding, KVIndexRetriever

from kvembed_rag.errors import IndexCorruptError
from kvembed_rag.retrieval.lexical import HybridConfig

TEXTS = {
    "a#0": ("a", "KV-Embedding re-routes the final token's key and value."),
    "a#1": ("a", "The prefix slot gets an additive bias."),
    "b#0": ("b", "FAISS searches dense vectors by inner product."),
    "c#0": ("c", "Meeting transcripts discuss the quarterly budget."),
}


@pytest.fixture(scope="module")
def embed_model(checkpoints) -> KVEmbedding:
    return KVEmbedding(model_name=str(checkpoints["llama"]))


def _nodes() -> list[TextNode]:
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

    nodes = []
    for node_id, (parent, text) in TEXTS.items():
        node = TextNode(id_=node_id, text=text, metadata={"source": parent})
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=parent)
        nodes.append(node)
    return nodes


def test_hybrid_retriever_finds_words_persists_and_feeds_document_retrieval(embed_model, tmp_path: Path) -> None:
    retriever = KVIndexRetriever.from_nodes(_nodes(), embed_model, hybrid="weighted:1", similarity_top_k=2)
    hits = retriever.retrieve("quarterly budget")
    assert hits[0].node.node_id == "c#0" and hits[0].node.ref_doc_id == "c"
    assert hits[0].node.metadata == {"source": "c"}
    documents = KVDocumentRetriever(
        KVIndexRetriever.from_nodes(_nodes(), embed_model, hybrid="weighted:1", similarity_top_k=4), top_k=2
    )
    assert [item.node.ref_doc_id for item in documents.retrieve("additive bias prefix slot")][:1] == ["a"]
    retriever.persist(str(tmp_path))
    loaded = KVIndexRetriever.from_persist_dir(str(tmp_path), embed_model, similarity_top_k=2)
    assert [h.node.node_id for h in loaded.retrieve("quarterly budget")] == [h.node.node_id for h in hits]
    assert loaded._index.hybrid == HybridConfig("weighted", 1.0)
    bm25 = next(tmp_path.glob("bm25-*.npz"))
    bm25.write_bytes(bm25.read_bytes()[:-3])
    with pytest.raises(IndexCorruptError):
        KVIndexRetriever.from_persist_dir(str(tmp_path), embed_model)


def test_feedback_passes_through_to_the_index(embed_model) -> None:
    retriever = KVIndexRetriever.from_nodes(_nodes(), embed_model, hybrid="weighted:0.5+feedback:2", similarity_top_k=3)
    assert retriever._index.hybrid.feedback == 2 and len(retriever.retrieve("budget")) == 3


def test_weight_zero_and_dense_only_give_the_dense_order(embed_model) -> None:
    dense = KVIndexRetriever.from_nodes(_nodes(), embed_model, similarity_top_k=4)
    zero = KVIndexRetriever.from_nodes(_nodes(), embed_model, hybrid="rrf:0+feedback:0+document:0", similarity_top_k=4)
    off = KVIndexRetriever.from_nodes(_nodes(), embed_model, hybrid="weighted:1", similarity_top_k=4)
    off._dense_only = True
    for query in ("budget", "inner product", "which token?"):
        expected = [h.node.node_id for h in dense.retrieve(query)]
        assert [h.node.node_id for h in zero.retrieve(query)] == expected
        assert [h.node.node_id for h in off.retrieve(query)] == expected


def test_from_nodes_embeds_long_nodes_as_pieces(embed_model) -> None:
    from kvembed_rag import passage_pieces

    text = " ".join(f"Item {i} of the minutes concerns budget line {i * 3}." for i in range(40))
    nodes = [TextNode(id_="long", text=text), TextNode(id_="short", text="FAISS searches dense vectors.")]
    retriever = KVIndexRetriever.from_nodes(nodes, embed_model, similarity_top_k=2, child_tokens=48)
    pieces = passage_pieces(embed_model.embedder, text, 48)
    assert len(pieces) > 2 and retriever._index.vector_count == len(pieces) + 1
    results = retriever.retrieve("budget line 30")
    assert {r.node.node_id for r in results} == {"long", "short"}
    assert next(r for r in results if r.node.node_id == "long").node.get_content() == text  # the whole node
    flat = KVIndexRetriever.from_nodes(nodes, embed_model, child_tokens=0)
    assert flat._index.vector_count == 2
