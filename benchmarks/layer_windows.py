"""Does layers='auto' earn its place? STS-B dev and SciFact dev for the auto window against fixed windows.

    python benchmarks/layer_windows.py --model default --windows auto,1-2,8-9,14-15 \
        [--sts-limit 500] [--scifact-queries 150 --scifact-corpus 600] [--json out.json]

SciFact runs on a reduced haystack (every judged document plus a seeded sample of the others, see
``load_beir``): scores are higher than on the full corpus; compare windows with each other, not with
published numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kvembed_rag import KVEmbedder
from kvembed_rag.eval.scoring import evaluate_retrieval, evaluate_sts
from kvembed_rag.eval.tasks import load_beir, load_sts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_window(text: str) -> list[int] | str:
    if text in ("auto", "default"):
        return text
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--windows", default="auto")
    parser.add_argument("--method", default="kv")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sts-limit", type=int, default=None)
    parser.add_argument("--scifact-queries", type=int, default=None)
    parser.add_argument("--scifact-corpus", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.data / "stsb" / "dev.tsv").is_file():
        print(f"no development data under {args.data}; skipping", file=sys.stderr)
        return 0
    sts = load_sts(args.data / "stsb" / "dev.tsv", args.sts_limit)
    scifact = load_beir(
        args.data / "scifact", "dev", query_limit=args.scifact_queries, corpus_limit=args.scifact_corpus
    )
    print(
        f"STS-B dev: {len(sts.scores)} pairs; SciFact dev: {len(scifact.queries)} queries over "
        f"{len(scifact.corpus)} documents",
        flush=True,
    )
    rows = []
    base = KVEmbedder.from_pretrained(args.model, method=args.method, layers="default", max_length=args.max_length)
    for window in args.windows.split(","):
        layers = parse_window(window)
        embedder = KVEmbedder(
            base.model,
            base.tokenizer,
            method=args.method,
            layers=layers,
            source=base.source,
            max_length=args.max_length,
        )
        row = {
            "model": args.model,
            "window": window,
            "layers": embedder.layers,
            "sts_spearman": round(evaluate_sts(embedder, sts).score, 4),
        }
        retrieval = evaluate_retrieval(embedder, scifact)
        row.update(
            {
                "scifact_ndcg@10": round(retrieval.score, 4),
                "scifact_recall@100": round(retrieval.extra["recall@100"], 4),
            }
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
