"""The core FAISS index alone: embed long documents, index them, search, save and reload.

    python examples/faiss_retriever.py [--docs FOLDER] [--model default] [--max-length 1024] [--out DIR]

Without --docs the corpus is six pages of Python's module documentation (pydoc), so it runs offline anywhere.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

from kvembed_rag import KVEmbedder, VectorIndex
from kvembed_rag.retrieval.chunking import chunk_text
from kvembed_rag.retrieval.documents import EXAMPLE_MODULES, read_folder, stdlib_documents

QUESTIONS = [
    "How do I parse a JSON string into Python objects?",
    "Which module computes the median and standard deviation of data?",
    "How can I run a shell command and capture its output?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", help="folder of .txt/.md files (default: stdlib pydoc pages)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=12, help="documents to index (default 12)")
    parser.add_argument("--out", help="save the index here (default: a temporary folder)")
    args = parser.parse_args()

    documents = (read_folder(args.docs) if args.docs else stdlib_documents(EXAMPLE_MODULES))[: args.limit]
    embedder = KVEmbedder.from_pretrained(args.model, max_length=args.max_length, show_progress=True)
    chunks = [(doc, chunk) for doc in documents for chunk in chunk_text(embedder, doc.text, title=doc.title)]
    start = time.perf_counter()
    vectors = embedder.encode_documents([chunk.text for _, chunk in chunks])
    print(f"embedded {len(documents)} documents as {len(chunks)} chunks in {time.perf_counter() - start:.1f} s")

    index = VectorIndex(embedder.dim, embedder=embedder.describe())
    index.upsert(
        [f"{doc.id}#{chunk.index}" for doc, chunk in chunks],
        vectors,
        [chunk.text for _, chunk in chunks],
        [{"document": doc.id, "title": doc.title} for doc, _ in chunks],
    )
    folder = Path(args.out or tempfile.mkdtemp()) / "index"
    index.save(folder)
    index = VectorIndex.load(folder, embedder=embedder.describe())  # verified reload
    for question, hits in zip(QUESTIONS, index.search(embedder.encode_queries(QUESTIONS), k=3), strict=True):
        print(f"\nQ: {question}")
        for hit in hits:
            print(f"  {hit.score:.3f}  {hit.metadata['document']:28s} {textwrap.shorten(hit.metadata['title'], 60)}")
    print(f"\nindex saved in {folder}")


if __name__ == "__main__":
    main()
