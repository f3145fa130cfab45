"""Long-document RAG with LlamaIndex: Settings.embed_model = KVEmbedding(), a FAISS store, persistence.

    python examples/llamaindex_rag.py [--docs FOLDER] [--model default] [--max-length 1024]

Without --docs the corpus is Python's module documentation (pydoc). Documents longer than the window are
split by kvembed-rag's chunker (title on every chunk); shorter ones are embedded whole.
"""

from __future__ import annotations

import argparse
import tempfile

import faiss
from llama_index.core import Settings, StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.schema import TextNode
from llama_index.embeddings.kvembed import KVEmbedding
from llama_index.vector_stores.faiss import FaissVectorStore

from kvembed_rag.retrieval.chunking import chunk_text
from kvembed_rag.retrieval.documents import EXAMPLE_MODULES, read_folder, stdlib_documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", help="folder of .txt/.md files (default: stdlib pydoc pages)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--question", default="How do I parse a JSON string into Python objects?")
    args = parser.parse_args()

    Settings.embed_model = KVEmbedding(model_name=args.model, max_length=args.max_length)
    embedder = Settings.embed_model.embedder
    sources = (read_folder(args.docs) if args.docs else stdlib_documents(EXAMPLE_MODULES))[: args.limit]
    nodes = [
        TextNode(text=chunk.text, id_=f"{doc.id}#{chunk.index}", metadata={"source": doc.id})
        for doc in sources
        for chunk in chunk_text(embedder, doc.text, title=doc.title)
    ]
    store = FaissVectorStore(faiss_index=faiss.IndexFlatIP(embedder.dim))  # inner product: higher = closer
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store), show_progress=True
    )
    folder = tempfile.mkdtemp()
    index.storage_context.persist(persist_dir=folder)
    reloaded = load_index_from_storage(
        StorageContext.from_defaults(vector_store=FaissVectorStore.from_persist_dir(folder), persist_dir=folder)
    )
    print(f"{len(sources)} documents -> {len(nodes)} nodes; index persisted in {folder} and reloaded")
    for hit in reloaded.as_retriever(similarity_top_k=3).retrieve(args.question):
        print(f"  {hit.score:.3f}  {hit.node.metadata['source']}")


if __name__ == "__main__":
    main()
