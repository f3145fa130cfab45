"""One document far longer than the embedder's window, through LlamaIndex alone: parse, index, find its last page.

    python examples/llamaindex_long_document.py [--model default] [--essays 6] [--chunk-tokens 1024]

The same document as examples/langchain_long_document.py (joined Paul Graham essays, or a generated report
with a planted fact). ``KVTokenNodeParser`` makes nodes that fit the embedder's window with the prompt and
metadata counted; nodes keep their document as ``ref_doc_id``; ``KVDocumentRetriever`` returns the
document by its best node, with that passage in its metadata.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.embeddings.kvembed import KVDocumentRetriever, KVEmbedding, KVTokenNodeParser

from kvembed_rag.demo import long_document

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "paul_graham_essays"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--essays", type=int, default=6)
    parser.add_argument("--paragraphs", type=int, default=300, help="size of the generated fallback document")
    parser.add_argument("--chunk-tokens", type=int, default=1024, help="tokens per embedder input, prompt included")
    args = parser.parse_args()

    embed_model = KVEmbedding(model_name=args.model, max_length=args.chunk_tokens)
    text, question = long_document(args.data, args.essays, args.paragraphs)
    tokens = len(embed_model.embedder.token_offsets(text))
    print(f"document: {len(text):,} characters, {tokens:,} tokens (window {args.chunk_tokens} tokens)")

    document = Document(text=text, doc_id="long", metadata={"source": "joined essays"})
    parser_ = KVTokenNodeParser(embed_model, chunk_overlap=64)
    index = VectorStoreIndex.from_documents([document], embed_model=embed_model, transformations=[parser_])
    print(f"nodes: {len(index.docstore.docs)} (each fits one input, metadata included)")

    print(f"question (from the last page): {question!r}")
    for rank, hit in enumerate(index.as_retriever(similarity_top_k=3).retrieve(question), start=1):
        where = (hit.node.start_char_idx or 0) / len(text)
        print(
            f"  node #{rank} of {hit.node.ref_doc_id!r} at {where:.0%} of the document: "
            f"{hit.node.get_content()[:90]!r}..."
        )
    docstore = SimpleDocumentStore()
    docstore.add_documents([document])
    retriever = KVDocumentRetriever(index.as_retriever(similarity_top_k=20), top_k=1, docstore=docstore)
    best = retriever.retrieve(question)[0]
    start = best.node.metadata["best_start_char_idx"] or 0
    on_last_page = start + len(best.node.metadata["best_passage"]) >= len(text) - 3000
    print(f"document {best.node.node_id!r}: best passage starts at character {start:,} of {len(text):,}")
    print(f"best passage on the last page: {'yes' if on_last_page else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
