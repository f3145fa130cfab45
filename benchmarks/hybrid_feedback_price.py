r"""What feedback costs a hybrid search: milliseconds per query with ``feedback`` 0 and 5, one process, interleaved.

    python benchmarks/hybrid_feedback_price.py --records 2000,20000 --json docs/results/hybrid_feedback_price.json

Feedback adds no forward pass: the fused top 5's stored vectors move the query and a second dense search runs.
This times :meth:`VectorIndex.search_hybrid` alone (query vectors given, so the embedder's forward pass, which
dominates a real search, is left out: the ratio here is the worst case) over random unit vectors of the default
model's width and texts of random words, in rounds that alternate the settings. ``feedback 5, one call per query``
calls ``search_hybrid`` once per query: every query's second dense search is then a FAISS search of its own, as
it was before the moved queries were batched (2026-12-07), so its ratio to ``feedback 5`` is what batching saves.
``feedback 5, rows one by one`` reads the candidates' stored vectors with one FAISS ``reconstruct`` per id, as
before ``reconstruct_batch`` (the same day): the two changes' before, side by side with their after.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

WORDS = [f"w{i}" for i in range(5000)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="2000,20000", help="index sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    from kvembed_rag.retrieval.lexical import HybridConfig
    from kvembed_rag.retrieval.vector_index import VectorIndex

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for records in (int(x) for x in args.records.split(",")):
        vectors = rng.normal(size=(records, args.dim)).astype(np.float32)
        texts = [" ".join(rng.choice(WORDS, size=200)) for _ in range(records)]
        index = VectorIndex(args.dim, hybrid=True)
        index.upsert([f"p{i}" for i in range(records)], vectors, texts)
        queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
        query_texts = [" ".join(rng.choice(WORDS, size=8)) for _ in range(args.queries)]
        configs = {
            "feedback 0": HybridConfig(feedback=0),
            "feedback 5": HybridConfig(feedback=5),
            "feedback 5, one call per query": HybridConfig(feedback=5),
            "feedback 5, rows one by one": HybridConfig(feedback=5),
        }
        batched = index._reconstruct

        def one_by_one(
            labels: list[int], *, raw: bool = False, index: VectorIndex = index, batched: Any = batched
        ) -> np.ndarray:  # the loop _reconstruct ran before
            if not labels:
                return batched(labels, raw=raw)
            return np.stack([index._faiss.reconstruct(int(label)) for label in labels]).astype(np.float32)

        index.search_hybrid(queries[:2], query_texts[:2], k=10)  # BM25 model built, FAISS warm
        seconds: dict[str, list[float]] = {name: [] for name in configs}
        for round_ in range(args.rounds):
            for name in configs if round_ % 2 == 0 else reversed(list(configs)):
                index._reconstruct = one_by_one if name.endswith("one by one") else batched  # type: ignore[method-assign]
                start = time.perf_counter()
                if name.endswith("one call per query"):
                    for i in range(args.queries):
                        index.search_hybrid(queries[i], query_texts[i], k=10, hybrid=configs[name])
                else:
                    index.search_hybrid(queries, query_texts, k=10, hybrid=configs[name])
                seconds[name].append((time.perf_counter() - start) / args.queries * 1000)
        best = {name: min(values) for name, values in seconds.items()}
        row = {
            "records": records,
            "dim": args.dim,
            "ms_per_query": best,
            "ratio": best["feedback 5"] / best["feedback 0"],
            "batched_over_per_call": best["feedback 5"] / best["feedback 5, one call per query"],
            "batch_reconstruct_over_loop": best["feedback 5"] / best["feedback 5, rows one by one"],
        }
        rows.append(row)
        print(
            f"{records:6d} records: feedback 0 {best['feedback 0']:.2f} ms, feedback 5 {best['feedback 5']:.2f} ms "
            f"per query (x{row['ratio']:.2f}); one call per query {best['feedback 5, one call per query']:.2f} ms "
            f"(batched x{row['batched_over_per_call']:.2f} of it); rows one by one "
            f"{best['feedback 5, rows one by one']:.2f} ms "
            f"(batch reconstruct x{row['batch_reconstruct_over_loop']:.2f})",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
