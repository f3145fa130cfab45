"""Documents per second: in-process versus Ray Data with 1 and 2 workers, on this machine.

    python benchmarks/ray_scaling.py [--model default] [--docs 160] [--max-length 512]

The corpus is Python's module documentation cut into windows of --max-length tokens. Wall times include
each job's start-up (worker processes, imports, one model load per actor); a 4-document job with the same
settings measures that start-up, and the "after_startup" figures subtract it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import ray

from kvembed_rag import KVEmbedder
from kvembed_rag.retrieval.chunking import chunk_text
from kvembed_rag.retrieval.distributed import embed_dataset
from kvembed_rag.retrieval.documents import stdlib_documents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--docs", type=int, default=160)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    options = {"max_length": args.max_length, "layers": "default"}
    embedder = KVEmbedder.from_pretrained(args.model, **options)
    chunks = [c.text for d in stdlib_documents() for c in chunk_text(embedder, d.text, title=d.title)][: args.docs]
    rows = [{"id": str(i), "text": t} for i, t in enumerate(chunks)]
    tokens = sum(len(e.ids) for e in embedder.tokenize(chunks))
    start = time.perf_counter()
    embedder.encode_documents(chunks)
    local = time.perf_counter() - start
    results = {"model": args.model, "docs": len(rows), "tokens": tokens, "in_process_docs_per_s": len(rows) / local}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    for workers in (1, 2):
        timings = {}
        for name, subset in (("startup", rows[:4]), ("full", rows)):  # a 4-document job measures the start-up
            start = time.perf_counter()
            embed_dataset(subset, tempfile.mkdtemp(), model=args.model, options=options, workers=workers, batch_size=16)
            timings[name] = time.perf_counter() - start
        results[f"ray_{workers}_workers_docs_per_s"] = len(rows) / timings["full"]
        results[f"ray_{workers}_workers_startup_s"] = timings["startup"]
        results[f"ray_{workers}_workers_docs_per_s_after_startup"] = (len(rows) - 4) / max(
            timings["full"] - timings["startup"], 1e-9
        )
    ray.shutdown()
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
