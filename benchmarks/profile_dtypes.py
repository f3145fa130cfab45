"""Where the time goes per dtype (issue 17): top operators of one kv forward, and the attention kernel alone.

python benchmarks/profile_dtypes.py [--model default] [--dtypes float32,bfloat16] [--lengths 512,4096]
    [--batch-tokens 4096] [--rows 12] [--kernel-only]

Part 1 (skipped with --kernel-only): ``torch.profiler`` over one ``kv`` forward of synthetic ids per dtype
and length (after a warm-up), operators sorted by self CPU time. Part 2: torch's CPU flash kernel at
Gemma-3-270M's attention shape (4 heads of 256) over 4,096 tokens per dtype: causal (no mask), with a
sliding-window float mask over all keys (what stock SDPA does for a masked layer), and the banded path
(:func:`kvembed_rag.attention.cpu_attention_with_lse`, query blocks against their window of keys).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from kvembed_rag import KVEmbedder, attention
from kvembed_rag.eval.throughput import synthetic_input


def median_ms(run: Callable[[], object], repeats: int = 3) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def kernel_table(dtypes: list[str], length: int = 4096, heads: int = 4, dim: int = 256, window: int = 512) -> None:
    flash = attention._CPU_FLASH_WITH_LSE  # torch's CPU flash kernel with the log-sum-exp
    if flash is None:
        print("this torch has no CPU flash kernel with log-sum-exp")
        return
    print(f"\nCPU flash kernel, {heads} heads x {dim}, {length} tokens, window {window} (median of 3, ms)")
    print(f"{'dtype':10s} {'causal':>8s} {'masked':>8s} {'banded':>8s}")
    positions = torch.arange(length)
    band = (positions[None, :] <= positions[:, None]) & (positions[None, :] > positions[:, None] - window)
    allowed = band[None, None]  # (1, 1, T, T)
    scale = dim**-0.5
    for name in dtypes:
        dtype = getattr(torch, name)
        q, k, v = (torch.randn(1, heads, length, dim).to(dtype) for _ in range(3))
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))
        causal = median_ms(lambda q=q, k=k, v=v: flash(q, k, v, 0.0, True, scale=scale))
        masked = median_ms(lambda q=q, k=k, v=v, m=mask: flash(q, k, v, 0.0, False, attn_mask=m, scale=scale))
        banded = median_ms(lambda q=q, k=k, v=v: attention._cpu_flash_with_lse(q, k, v, allowed, scale, window))
        print(f"{name:10s} {causal:8.0f} {masked:8.0f} {banded:8.0f}", flush=True)


def operator_tables(model: str, dtypes: list[str], lengths: list[int], batch_tokens: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name in dtypes:
        embedder = KVEmbedder.from_pretrained(model, dtype=name, layers="auto")
        vocab = int(embedder.model.config.vocab_size)
        for length in lengths:
            items = [synthetic_input(length, vocab, False, seed) for seed in range(max(1, batch_tokens // length))]
            seconds = median_ms(lambda e=embedder, b=items: e.embed_encoded(b), repeats=1) / 1000
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                embedder.embed_encoded(items)
            print(f"\n==== {name}, {len(items)} x {length} tokens: {len(items) * length / seconds:.0f} tokens/s")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows), flush=True)
        del embedder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--lengths", default="512,4096")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--kernel-only", action="store_true")
    args = parser.parse_args()
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not args.kernel_only:
        lengths = [int(n) for n in args.lengths.split(",")]
        operator_tables(args.model, dtypes, lengths, args.batch_tokens, args.rows)
    kernel_table(dtypes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
