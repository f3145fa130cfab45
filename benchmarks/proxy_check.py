"""The label-free proxy rule's curve on chosen windows, to set beside ``window_search.py``'s dev winner.

    nice -n 10 python benchmarks/proxy_check.py --model default --starts 4-16:2 --length 2 --json out.json

For each window (and re-routing off) the first halves of the calibration texts, embedded as queries, retrieve
their second halves, embedded as documents (``layer_selection.proxy_curve``; no labels, no post-processing).
``kvembed-rag select-layers --proxy`` scores every candidate start; this script scores a subset (a CPU budget).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from window_search import parse_ints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--starts", default="", help="window starts, e.g. '4-16:2' (default: every candidate)")
    parser.add_argument("--length", type=int, help="window length (default: the ID rule's, floor(0.1 L) + 1)")
    parser.add_argument("--bias", type=float, help="default: the model's default")
    parser.add_argument("--pooling", help="default: the method's")
    parser.add_argument("--calibration", help="one text per line (default: the shipped 222)")
    parser.add_argument("--texts", type=int, help="use the first N calibration texts only (a CPU budget)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    from kvembed_rag import KVEmbedder
    from kvembed_rag.layer_selection import (
        choose_proxy_window,
        load_calibration,
        proxy_curve,
        proxy_windows,
        split_halves,
    )

    torch.set_num_threads(args.threads)
    options = {k: v for k, v in (("bias", args.bias), ("pooling", args.pooling)) if v is not None}
    embedder = KVEmbedder.from_pretrained(
        args.model, method="kv", layers="id", dtype=args.dtype, postprocess="none", **options
    )
    texts = load_calibration(args.calibration)[: args.texts]
    candidates = proxy_windows(embedder.num_layers, args.length)
    if args.starts:
        wanted = set(parse_ints(args.starts))
        candidates = [w for w in candidates if w[0] in wanted]
    start = time.perf_counter()
    scores, off = proxy_curve(embedder, texts, candidates)
    chosen = choose_proxy_window({s: v["mrr"] for s, v in scores.items()}, candidates)
    print(f"{args.model}: {len(split_halves(texts)[0])} half-text pairs, bias {embedder.bias:g}, {embedder.pooling}")
    print("| window | top-1 | MRR |\n|---|---|---|")
    for window in candidates:
        value = scores[window[0]]
        mark = " **proxy pick**" if window == chosen else ""
        print(f"| {window}{mark} | {value['top1']:.4f} | {value['mrr']:.4f} |")
    print(f"| `layers=[]` | {off['top1']:.4f} | {off['mrr']:.4f} |")
    print(f"proxy pick {chosen}; shipped (ID rule) {embedder.layers}; {time.perf_counter() - start:.0f} s")
    if args.json:
        payload = {
            "args": vars(args) | {"json": str(args.json)},
            "windows": {str(w): scores[w[0]] for w in candidates},
            "off": off,
            "chosen": chosen,
            "id_window": embedder.layers,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
