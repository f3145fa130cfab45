"""One document far longer than the embedder's window, through LangChain alone: split, index, find its last page.

    python examples/langchain_long_document.py [--model default] [--essays 6] [--chunk-tokens 1024]

The document is the first ``--essays`` Paul Graham essays from ../shared/data/paul_graham_essays joined
into one text (a generated report with a planted fact when the data is absent). ``KVTokenTextSplitter``
cuts it by the embedder's own tokens, with the prompt counted; the store keeps the chunks and the
document; a ``search_type="parent"`` retriever returns the document with its best passage. The question
is a sentence from the document's last page, so the right answer is known.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.documents import Document
from langchain_kvembed import KVEmbeddings, KVFaissVectorStore, KVTokenTextSplitter

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

    embeddings = KVEmbeddings(model=args.model, max_length=args.chunk_tokens)
    text, question = long_document(args.data, args.essays, args.paragraphs)
    tokens = len(embeddings.embedder.token_offsets(text))
    print(f"document: {len(text):,} characters, {tokens:,} tokens (window {args.chunk_tokens} tokens)")

    splitter = KVTokenTextSplitter(embeddings, chunk_overlap=64)
    store = KVFaissVectorStore(embeddings)
    store.add_documents([Document(page_content=text, id="long", metadata={"source": "joined essays"})], split=True)
    print(f"chunks: {len(store.index or [])} (each fits one input; splitter budget {splitter._chunk_size} text tokens)")

    print(f"question (from the last page): {question!r}")
    for rank, chunk in enumerate(store.similarity_search(question, k=3), start=1):
        where = chunk.metadata["start_index"] / len(text)
        print(f"  chunk #{rank}: {chunk.id} at {where:.0%} of the document: {chunk.page_content[:90]!r}...")
    best = store.as_retriever(search_type="parent", k=1).invoke(question)[0]
    start = best.metadata["best_start_index"]
    on_last_page = start + len(best.metadata["best_passage"]) >= len(text) - 3000
    print(f"document {best.id!r}: best passage starts at character {start:,} of {len(text):,}")
    print(f"best passage on the last page: {'yes' if on_last_page else 'no'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
