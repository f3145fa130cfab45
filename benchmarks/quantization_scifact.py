"""What compact vectors cost on SciFact dev: memory per million vectors, Recall@100 and nDCG@10 per precision.

    python benchmarks/quantization_scifact.py [--model default] [--queries 100] [--corpus 1000] [--json out.json]

Every precision indexes the same cached float32 vectors (kvembed_rag.eval.cache: the first run embeds, later
runs only score) in kvembed_rag's VectorIndex: float32 (IndexFlatIP), int8 (FAISS SQ8, ranges trained on the
corpus), binary (IndexBinaryFlat, Hamming), each with and without re-ranking their top 100 or 400 on the float32
vectors (400 is 40% of a 1,000-document haystack: close to exact search).
Memory is FAISS's serialised index size per vector x 1e6 (codes only; ids, texts and metadata not counted).
With --corpus the haystack is every judged document plus a seeded sample of the rest (easier than
the full 5,183 abstracts: compare precisions with each other, not with published numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from kvembed_rag import KVEmbedder, VectorIndex
from kvembed_rag.eval.cache import EmbeddingCache
from kvembed_rag.eval.scoring import score_rankings
from kvembed_rag.eval.tasks import load_beir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--corpus", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no SciFact data at {args.data}; skipping", file=sys.stderr)
        return 0
    task = load_beir(args.data, "dev", query_limit=args.queries, corpus_limit=args.corpus)
    embedder = KVEmbedder.from_pretrained(args.model, dtype=args.dtype)
    cache = EmbeddingCache()
    doc_ids, texts = task.document_texts()
    query_ids = list(task.queries)
    queries, _ = cache.encode(embedder, [task.queries[q] for q in query_ids], "query")
    documents, _ = cache.encode(embedder, texts, "document")
    floats = dict(zip(doc_ids, documents, strict=True))  # what a user keeps for rescoring (e.g. a memory map)
    rows = []
    for precision in ("float32", "int8", "binary"):
        index = VectorIndex(embedder.dim, precision=precision)
        index.upsert(doc_ids, documents)
        with tempfile.TemporaryDirectory() as folder:
            index.save(folder)
            manifest = json.loads((Path(folder) / "manifest.json").read_text())
            size = (Path(folder) / manifest["files"]["index"]).stat().st_size
        mb_per_million = size / len(doc_ids) * 1e6 / 2**20
        for rescore in (0, 1, 4):  # 0: the codes' own ranking; n: their top 100*n re-ranked on float32
            if rescore and precision == "float32":
                continue
            hits = index.search(queries, 100, rescore=floats if rescore else None, rescore_multiplier=max(1, rescore))
            metrics = score_rankings([[h.id for h in row] for row in hits], query_ids, task.qrels)
            rows.append(
                {
                    "precision": precision,
                    "rescore": rescore,
                    "mib_per_million": round(mb_per_million, 1),
                    **{k: round(v, 4) for k, v in metrics.items()},
                }
            )
    base = rows[0]
    print(
        f"model {args.model} ({embedder.dtype}), {len(query_ids)} queries, {len(doc_ids)} documents, dim {embedder.dim}"
    )
    print("| precision | rescore | MiB / 1M vectors | Recall@100 | nDCG@10 | nDCG@10 vs float32 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        how = f"float32, top {100 * row['rescore']}" if row["rescore"] else "no"
        print(
            f"| {row['precision']} | {how} | {row['mib_per_million']:,.0f} | {row['recall@100']:.4f} | "
            f"{row['ndcg@10']:.4f} | {row['ndcg@10'] / base['ndcg@10']:.1%} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"model": args.model, "queries": len(query_ids), "documents": len(doc_ids), "rows": rows}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
