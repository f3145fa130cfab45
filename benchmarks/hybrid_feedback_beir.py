r"""Does the hybrid path's feedback hold off QMSum? nDCG@10 on a BEIR folder (SciFact) through ``VectorIndex``.

    python benchmarks/hybrid_feedback_beir.py --queries 300 --corpus 1500 --windows "8,9;off" --dtype bfloat16 \
        --json docs/results/hybrid_feedback_scifact.json

Feedback (the fused top 5 moving the dense query) was chosen and confirmed on QMSum meeting passages; a default
of ``kvembed-rag index`` also serves short documents. This runs the product's own path -- a hybrid
:class:`~kvembed_rag.retrieval.VectorIndex` over the shipped embedder's vectors (kv, ``whiten:0.6``) and the
abstracts' texts -- with feedback 0 and 5, beside BM25 alone and dense alone, per re-routed window (``off`` =
``layers=[]``). A seeded sample of judged queries; the haystack is every abstract they judge plus a seeded
sample of the rest (smaller and easier than the full corpus: compare rows, not with published numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_postprocess import parse_windows

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--corpus", type=int, default=1500)
    parser.add_argument("--windows", default="8,9;off")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bm25", default="1.2:0.75", help="BM25's k1:b points (Lucene), comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data at {args.data}: skipping", file=sys.stderr)
        return 0
    import torch

    from kvembed_rag import KVEmbedder
    from kvembed_rag.eval.cache import EmbeddingCache
    from kvembed_rag.eval.metrics import ndcg_at_k
    from kvembed_rag.eval.tasks import load_beir
    from kvembed_rag.layer_selection import load_calibration
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import BM25Params, BM25Store, HybridConfig
    from kvembed_rag.retrieval.vector_index import VectorIndex

    torch.set_num_threads(args.threads)
    task = load_beir(args.data, query_limit=args.queries, corpus_limit=args.corpus, sample=True)
    ids, texts = task.document_texts()
    query_ids = list(task.queries)
    query_texts = [task.queries[q] for q in query_ids]
    # raw vectors; each window gets the shipped whitening fitted on the calibration texts (as the passage scripts)
    base = KVEmbedder.from_pretrained("default", dtype=args.dtype, max_length=512, postprocess="none")
    calibration = load_calibration()
    cache = EmbeddingCache("default")
    rows = []

    def score(name: str, window: str, hits: list[list[str]]) -> None:
        value = float(np.mean([ndcg_at_k(h, task.qrels[q], 10) for q, h in zip(query_ids, hits, strict=True)]))
        rows.append({"system": name, "window": window, "ndcg@10": value, "queries": len(query_ids), "corpus": len(ids)})
        print(f"{window:5s} {name:28s} nDCG@10 {value:.4f}", flush=True)

    for window in parse_windows(args.windows):
        embedder = base.variant(layers=window)
        label = ",".join(map(str, window)) or "off"
        stats = fit(cache.encode(embedder, calibration, "document")[0], parse_spec("whiten:0.6"))
        docs = apply(cache.encode(embedder, texts, "document")[0], stats)
        queries = apply(cache.encode(embedder, query_texts, "query")[0], stats)
        for point in args.bm25.split(","):
            k1, b = (float(x) for x in point.split(":"))
            index = VectorIndex(docs.shape[1], hybrid=True)
            index.lexical = BM25Store(BM25Params(k1=k1, b=b))
            index.upsert(ids, docs, texts)
            if point == args.bm25.split(",")[0]:
                score("dense", label, [[h.id for h in row] for row in index.search(queries, 10)])
            for name, config in (
                ("bm25", HybridConfig("weighted", 1.0, feedback=0)),
                ("hybrid, no feedback", HybridConfig(feedback=0)),
                ("hybrid, feedback 5", HybridConfig()),
            ):
                if name == "bm25" and label != "8,9":
                    continue
                hits = index.search_hybrid(queries, query_texts, 10, hybrid=config)
                score(f"{name}, bm25 k{k1} b{b}", label, [[h.id for h in row] for row in hits])
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
