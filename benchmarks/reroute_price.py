"""What re-routing costs: ``kv`` against the same embedder with ``layers=[]`` and the stock forward (issue 31).

    python benchmarks/reroute_price.py [--model default] [--dtypes float32,bfloat16] [--lengths 128,512,2048,4096]
        [--repeats 11] [--threads 2] [--json out.json]

Per dtype and length, one synthetic text of that many tokens (``kvembed-rag bench``'s input), three ways in one
process: ``plain`` (``model(input_ids, attention_mask)``, transformers' own path), ``off`` (the embedder with
``layers=[]``: everything kv does but re-routing) and ``kv``. Each round runs the three once in a shuffled order (on
a 2-core VM a fixed order favoured whatever ran first by up to 10%), after a warm-up; a row reports the median and
the best of the rounds as tokens/s and the ratios kv / off (re-routing's own price) and kv / plain.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each run, ``repeats`` rounds, each round in a shuffled order after one warm-up each."""
    rng = random.Random(seed)
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        order = list(runs)
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def one_text(kv: Any, length: int) -> tuple[list[Any], Callable[[], None]]:
    """One synthetic text of ``length`` tokens (``kvembed-rag bench``'s input) for ``kv``'s backbone, and the stock
    forward over it (``model(input_ids, attention_mask)``, transformers' own path)."""
    import torch

    from kvembed_rag.eval.throughput import synthetic_input

    items = [synthetic_input(length, int(kv.model.config.vocab_size), False, 0)]
    ids, mask, _ = kv.collate(items)

    def plain() -> None:
        with torch.inference_mode():
            kv.model(input_ids=ids, attention_mask=mask)

    return items, plain


def before_after(
    install: Callable[[bool], None], dtypes: list[str], lengths: list[int], repeats: int
) -> Iterator[dict[str, Any]]:
    """A change's before/after in one process: ``kv`` and ``layers=[]`` with ``install(False)`` ("old") and
    ``install(True)`` ("new", restored after every call), beside the stock forward, rounds in a shuffled order.
    One row per dtype and length: median tokens/s of each run and the new / old ratios."""
    from kvembed_rag import KVEmbedder

    def switched(on: bool, run: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            install(on)
            try:
                return run()
            finally:
                install(True)

        return call

    for dtype in dtypes:
        kv = KVEmbedder.from_pretrained("default", dtype=dtype)
        off = kv.variant(layers=[])
        for length in lengths:
            items, plain = one_text(kv, length)
            runs: dict[str, Callable[[], object]] = {"plain": plain}
            for on, tag in ((False, "old"), (True, "new")):
                runs[f"kv_{tag}"] = switched(on, lambda e=kv, i=items: e.embed_encoded(i))
                runs[f"off_{tag}"] = switched(on, lambda e=off, i=items: e.embed_encoded(i))
            seconds = interleaved(runs, repeats)
            rate = {name: length / statistics.median(values) for name, values in seconds.items()}
            yield {
                "length": length,
                "dtype": dtype,
                "repeats": repeats,
                **{name: round(value) for name, value in rate.items()},
                "kv new/old": round(rate["kv_new"] / rate["kv_old"], 3),
                "off new/old": round(rate["off_new"] / rate["off_old"], 3),
                "kv/plain new": round(rate["kv_new"] / rate["plain"], 3),
            }


def row(length: int, dtype: str, seconds: dict[str, list[float]]) -> dict[str, Any]:
    """Tokens/s (median and best round) and the ratios kv / off and kv / plain."""
    median = {name: length / statistics.median(values) for name, values in seconds.items()}
    best = {name: length / min(values) for name, values in seconds.items()}
    return {
        "length": length,
        "dtype": dtype,
        **{f"{name}_tokens_per_s": round(value, 1) for name, value in median.items()},
        "kv_over_off": round(median["kv"] / median["off"], 3),
        "kv_over_plain": round(median["kv"] / median["plain"], 3),
        "best_kv_over_off": round(best["kv"] / best["off"], 3),
        "best_kv_over_plain": round(best["kv"] / best["plain"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--lengths", default="128,512,2048,4096")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    from kvembed_rag import KVEmbedder

    torch.set_num_threads(args.threads)
    rows = []
    for dtype in args.dtypes.split(","):
        kv = KVEmbedder.from_pretrained(args.model, dtype=dtype)
        off = kv.variant(layers=[])
        for length in (int(x) for x in args.lengths.split(",")):
            items, plain = one_text(kv, length)
            runs: dict[str, Callable[[], object]] = {
                "plain": plain,
                "off": lambda e=off, i=items: e.embed_encoded(i),
                "kv": lambda e=kv, i=items: e.embed_encoded(i),
            }
            rows.append(row(length, dtype, interleaved(runs, args.repeats)))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| length | dtype | plain tok/s | layers=[] tok/s | kv tok/s | kv / off | kv / plain | best of rounds |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['length']:,} | {r['dtype']} | {r['plain_tokens_per_s']:.0f} | {r['off_tokens_per_s']:.0f} | "
            f"{r['kv_tokens_per_s']:.0f} | {r['kv_over_off']:.3f} | {r['kv_over_plain']:.3f} | "
            f"{r['best_kv_over_off']:.3f}, {r['best_kv_over_plain']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
