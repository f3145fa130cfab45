"""Quality cost of bfloat16 against float32, one process, same data (issue 17).

python benchmarks/dtype_quality.py [--model default] [--dtypes float32,bfloat16] [--sts-limit 400]
    [--scifact-queries 50 --scifact-corpus 150] [--json FILE]

STS-B dev: Spearman on a seeded random sample of ``--sts-limit`` pairs (seed 0). SciFact dev: nDCG@10 over
the first ``--scifact-queries`` judged queries against their judged documents plus a seeded sample of the
rest, ``--scifact-corpus`` documents in all (a smaller haystack than the full corpus: say so). Also the
agreement of every dtype's vectors with float32's (mean and minimum cosine) and the encode time. The
target (reported, not asserted): every score within 0.003 of float32's. Skips cleanly without the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from kvembed_rag import KVEmbedder
from kvembed_rag.eval import load_beir, load_sts, ndcg_at_k, spearman

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOLERANCE = 0.003


def _load(model: str, label: str) -> KVEmbedder:
    return KVEmbedder.from_pretrained(model, dtype=label)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--sts", type=Path, default=DATA / "stsb" / "dev.tsv")
    parser.add_argument("--scifact", type=Path, default=DATA / "scifact")
    parser.add_argument("--sts-limit", type=int, default=400)
    parser.add_argument("--scifact-queries", type=int, default=50)
    parser.add_argument("--scifact-corpus", type=int, default=150)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.sts.is_file() or not (args.scifact / "corpus.jsonl").is_file():
        print(f"no STS-B at {args.sts} or SciFact at {args.scifact}; skipping", file=sys.stderr)
        return 0
    pairs = load_sts(args.sts, args.sts_limit, sample=True, seed=0)
    task = load_beir(args.scifact, split="dev").limited(args.scifact_queries, args.scifact_corpus, seed=0)
    doc_ids, doc_texts = task.document_texts()
    query_ids = list(task.queries)
    rows: list[dict] = []
    reference: dict[str, np.ndarray] = {}
    for label in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        embedder = _load(args.model, label)
        start = time.perf_counter()
        a, b = embedder.encode(pairs.first), embedder.encode(pairs.second)
        sts_seconds = time.perf_counter() - start
        start = time.perf_counter()
        docs = embedder.encode_documents(doc_texts)
        queries = embedder.encode_queries([task.queries[q] for q in query_ids])
        scifact_seconds = time.perf_counter() - start
        ranked = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
        ndcg = float(
            np.mean([ndcg_at_k([doc_ids[j] for j in ranked[i]], task.qrels[q], 10) for i, q in enumerate(query_ids)])
        )
        vectors = np.concatenate([a, b, docs, queries])
        if label == "float32":
            reference["float32"] = vectors
        base = reference.get("float32")
        cosine = (vectors * base).sum(axis=1) if base is not None else None
        row = {
            "dtype": label,
            "describe_dtype": embedder.describe()["dtype"],
            "weights": embedder.describe().get("weights"),
            "stsb_spearman": round(spearman((a * b).sum(axis=1), pairs.scores), 4),
            "stsb_pairs": len(pairs.scores),
            "stsb_seconds": round(sts_seconds, 1),
            "scifact_ndcg10": round(ndcg, 4),
            "scifact_queries": len(query_ids),
            "scifact_corpus": len(doc_ids),
            "scifact_seconds": round(scifact_seconds, 1),
            "cosine_to_float32_mean": None if cosine is None else round(float(cosine.mean()), 5),
            "cosine_to_float32_min": None if cosine is None else round(float(cosine.min()), 5),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del embedder
    base_row = next((r for r in rows if r["dtype"] == "float32"), None)
    if base_row is not None:
        for row in rows:
            if row is base_row:
                continue
            for key in ("stsb_spearman", "scifact_ndcg10"):
                delta = row[key] - base_row[key]
                verdict = "met" if abs(delta) <= TOLERANCE else "MISSED"
                print(f"target {row['dtype']:9s} {key:15s} within {TOLERANCE} of float32: {delta:+.4f}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
