"""Long-document RAG with LangChain: KVEmbeddings + KVFaissVectorStore + an LCEL chain.

    python examples/langchain_rag.py [--docs FOLDER] [--model default] [--max-length 1024] [--generate]

Documents are embedded whole when they fit in the embedder's window and split (with their title on every
chunk) only when they do not. Without --docs the corpus is Python's module documentation (pydoc).
With --generate a local causal LM answers (default: the same Gemma-3-270M, a small stand-in).
"""

from __future__ import annotations

import argparse

from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_kvembed import KVEmbeddings, KVFaissVectorStore

from kvembed_rag.retrieval.chunking import chunk_text
from kvembed_rag.retrieval.documents import EXAMPLE_MODULES, read_folder, stdlib_documents

PROMPT = ChatPromptTemplate.from_template(
    "Answer the question using only the context.\n\nContext:\n{context}\n\nQuestion: {question}\nAnswer:"
)


def format_docs(documents: list[Document]) -> str:
    return "\n\n".join(f"[{d.metadata['source']}] {d.page_content[:1200]}" for d in documents)


def local_llm(model: str, max_new_tokens: int = 64) -> RunnableLambda:
    """A tiny local generator: the prompt in, the continuation out (offline)."""
    import torch
    from transformers import AutoModelForCausalLM

    from kvembed_rag.loading import resolve

    location, _ = resolve(model)
    embeddings_tokenizer = KVEmbeddings(model=model).embedder.tokenizer
    lm = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32).eval()

    def generate(prompt_value: object) -> str:
        text = prompt_value.to_string() if hasattr(prompt_value, "to_string") else str(prompt_value)
        ids = embeddings_tokenizer(text[-6000:], return_tensors="pt")
        with torch.inference_mode():
            out = lm.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        return str(embeddings_tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))

    return RunnableLambda(generate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", help="folder of .txt/.md files (default: stdlib pydoc pages)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--question", default="How do I parse a JSON string into Python objects?")
    parser.add_argument("--generate", action="store_true", help="answer with a local causal LM")
    args = parser.parse_args()

    embeddings = KVEmbeddings(model=args.model, max_length=args.max_length, show_progress=True)
    sources = (read_folder(args.docs) if args.docs else stdlib_documents(EXAMPLE_MODULES))[: args.limit]
    documents = [
        Document(page_content=chunk.text, metadata={"source": doc.id, "title": doc.title, "chunk": chunk.index})
        for doc in sources
        for chunk in chunk_text(embeddings.embedder, doc.text, title=doc.title)
    ]
    print(f"{len(sources)} documents -> {len(documents)} chunks (split only beyond {args.max_length} tokens)")
    store = KVFaissVectorStore.from_documents(documents, embeddings)
    retriever = store.as_retriever(k=3)
    hits = store.similarity_search_with_score(args.question, k=3)
    print(f"Q: {args.question}")
    for doc, score in hits:
        print(f"  {score:.3f}  {doc.metadata['source']}  chunk {doc.metadata['chunk']}")
    if args.generate:
        chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | local_llm(args.model)
        answer = str(chain.invoke(args.question)).strip()
        print("\nAnswer (local LLM, from the retrieved context):", answer or "(the generator returned nothing)")
    else:
        best, _ = hits[0]
        passage = " ".join(best.page_content.split())[:600]
        print(f"\nBest passage ({best.metadata['source']}, chunk {best.metadata['chunk']}):\n{passage}")
        print("\nAdd --generate to have a local LLM answer from the top passages (an LCEL chain).")


if __name__ == "__main__":
    main()
