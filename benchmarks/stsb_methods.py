"""STS-B dev Spearman of every method on one backbone, in one process.

python benchmarks/stsb_methods.py [--model default] [--data ../shared/data/stsb/dev.tsv] [--limit N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kvembed_rag import METHODS, KVEmbedder
from kvembed_rag.eval import load_sts, spearman

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "dev.tsv"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--extra", default="{}", help="JSON of extra from_pretrained keyword arguments")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"no STS data at {args.data}; skipping", file=sys.stderr)
        return 0
    pairs = load_sts(args.data, args.limit)
    rows = []
    embedder = None
    for method in args.methods.split(","):
        embedder = KVEmbedder.from_pretrained(args.model, method=method, **json.loads(args.extra))
        start = time.perf_counter()
        a = embedder.encode(pairs.first)
        b = embedder.encode(pairs.second)
        seconds = time.perf_counter() - start
        score = spearman((a * b).sum(axis=1), pairs.scores)
        rows.append(
            {
                "method": method,
                "spearman": round(score, 4),
                "n": len(pairs.scores),
                "seconds": round(seconds, 1),
                "layers": embedder.describe()["layers"],
            }
        )
        print(f"{method:18s} {score:.4f}  ({seconds:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
