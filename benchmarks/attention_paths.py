"""Before/after, in one run: re-routed layers through the explicit ``(B, 1, Q, K+1)`` float mask (before)
versus the stock causal kernel plus a merged slot (after), on CPU; the ``attention.ATTN_SDPA_EXPLICIT``
registry key selects the before path.

    python benchmarks/attention_paths.py [--model default] [--lengths 512,2048,4096] [--json]

Same model, same synthetic batches (``batch_tokens`` padded tokens), same process; the order alternates
so that drift in machine load does not favour either side. Prints tokens/s, peak RSS above the start and
the after/before ratio; ``plain`` (the bare forward) is the reference for both. First, the same comparison
for one attention call at Gemma-3-270M's shape (``--op-only`` stops there).
"""

from __future__ import annotations

import argparse
import json

import torch

from kvembed_rag import KVEmbedder, attention
from kvembed_rag.eval.throughput import measure, synthetic_input
from kvembed_rag.tokenization import EncodedText


def op_level(lengths: list[int], repeats: int = 3) -> list[dict[str, float]]:
    """One re-routed attention call at Gemma-3-270M's shape (4 query heads, 1 KV head, head_dim 256), alone."""
    import statistics
    import time
    import types

    from kvembed_rag.attention import build_plan, kv_sdpa_attention_forward, kv_sdpa_explicit_attention_forward

    module = types.SimpleNamespace(layer_idx=0, head_dim=256, num_key_value_groups=4)
    rows = []
    for length in lengths:
        generator = torch.Generator().manual_seed(0)
        q = torch.randn(1, 4, length, 256, generator=generator)
        k, v = (torch.randn(1, 1, length, 256, generator=generator) for _ in range(2))
        plan = build_plan(torch.ones(1, length, dtype=torch.long), layers=[0], bias=1.0)
        times: dict[str, float] = {}
        outputs = {}
        for name in ("before", "after", "before"):
            forward = kv_sdpa_explicit_attention_forward if name == "before" else kv_sdpa_attention_forward
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                outputs[name] = forward(module, q, k, v, None, kv_plan=plan)[0]
                runs.append(time.perf_counter() - start)
            times[name] = min(times.get(name, float("inf")), statistics.median(runs))
        difference = (outputs["before"] - outputs["after"]).abs().max().item()
        rows.append({"length": length, "before_s": times["before"], "after_s": times["after"], "max_diff": difference})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--lengths", default="512,2048,4096")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--op-only", action="store_true", help="only time one attention call (seconds, no model)")
    args = parser.parse_args()
    for row in op_level([int(x) for x in args.lengths.split(",")]):
        print(
            f"one attention call @{row['length']}: before {row['before_s'] * 1e3:.1f} ms, after "
            f"{row['after_s'] * 1e3:.1f} ms ({row['before_s'] / row['after_s']:.2f}x), max diff {row['max_diff']:.1e}"
        )
    if args.op_only:
        return 0
    embedder = KVEmbedder.from_pretrained(args.model, max_length=8192)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        batch = max(1, args.batch_tokens // length)
        items = [synthetic_input(length, int(embedder.model.config.vocab_size), False, seed) for seed in range(batch)]
        ids, mask, _ = embedder.collate(items)

        def plain(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
            with torch.inference_mode():
                embedder.model(input_ids=ids, attention_mask=mask)

        def kv(items: list[EncodedText] = items) -> None:
            embedder.embed_encoded(items)

        results: dict[str, tuple[float, float]] = {}
        for name, explicit, run in (
            ("plain", False, plain),
            ("kv explicit mask (before)", True, kv),
            ("kv merged slot (after)", False, kv),
        ):
            # the transformers way to switch a model's attention: its registry key
            embedder.model.set_attn_implementation(attention.ATTN_SDPA_EXPLICIT if explicit else attention.ATTN_SDPA)
            results[name] = measure(run, embedder.device, args.repeats)
        embedder.model.set_attn_implementation(attention.ATTN_SDPA)
        plain_s = results["plain"][0]
        for name, (seconds, peak) in results.items():
            rows.append(
                {
                    "length": length,
                    "batch": batch,
                    "path": name,
                    "tokens_per_s": round(batch * length / seconds, 1),
                    "x_plain": round(plain_s / seconds, 3),
                    "peak_mb": round(peak, 1),
                }
            )
        before, after = results["kv explicit mask (before)"][0], results["kv merged slot (after)"][0]
        rows.append({"length": length, "path": "after/before speed", "ratio": round(before / after, 3)})
    if args.json:
        print(json.dumps({"model": args.model, "layers": embedder.layers, "rows": rows}, indent=1))
    else:
        print(f"model {args.model}, re-routed layers {embedder.layers}, {args.batch_tokens} padded tokens per batch")
        for row in rows:
            if "ratio" in row:
                print(f"{row['length']:6d}  after/before speed: {row['ratio']:.3f}x")
            else:
                print(
                    f"{row['length']:6d} {row['path']:26s} {row['tokens_per_s']:9.0f} tok/s "
                    f"{row['x_plain']:6.3f}x plain {row['peak_mb']:8.1f} MB"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
