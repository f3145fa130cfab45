"""SciFact dev nDCG@10 through the LangChain example's own pipeline (KVEmbeddings -> KVFaissVectorStore).

    python benchmarks/scifact_langchain.py [--model default] [--queries 150] [--corpus 600] [--max-length 512]

With --corpus the haystack is every judged document plus a seeded sample of the rest (see load_beir);
without it the whole 5,183-abstract corpus is embedded (about an hour on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from langchain_kvembed import KVEmbeddings, KVFaissVectorStore

from kvembed_rag.eval.scoring import score_rankings
from kvembed_rag.eval.tasks import load_beir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--method", default="kv")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--corpus", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"no SciFact data at {DATA}; skipping", file=sys.stderr)
        return 0
    task = load_beir(DATA, "dev", query_limit=args.queries, corpus_limit=args.corpus)
    embeddings = KVEmbeddings(model=args.model, method=args.method, max_length=args.max_length)
    doc_ids, texts = task.document_texts()
    start = time.perf_counter()
    store = KVFaissVectorStore.from_texts(texts, embeddings, ids=doc_ids)
    indexed = time.perf_counter() - start
    query_ids = list(task.queries)
    ranked = [[d.id for d in store.similarity_search(task.queries[q], k=100)] for q in query_ids]
    metrics = score_rankings(ranked, query_ids, task.qrels)
    print(
        json.dumps(
            {
                "model": args.model,
                "method": args.method,
                "queries": len(query_ids),
                "documents": len(doc_ids),
                "max_length": args.max_length,
                "index_seconds": round(indexed, 1),
                **{k: round(v, 4) for k, v in metrics.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
