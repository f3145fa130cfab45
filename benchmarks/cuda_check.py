"""One prepared GPU check (issue 17): correctness against eager, then throughput, in under five minutes.

python benchmarks/cuda_check.py [--budget 280] [--json FILE]

Needs a CUDA device (prints a line and exits 0 without one). Builds its own random models (no tests/
import, no download): small Llama- and Gemma3-shaped ones for the invariances, and the paper's Qwen3-4B
shape (``kvembed_rag.eval.throughput.random_model``) for throughput.

1. The merged-slot kernels' load-time verdict per dtype (``attention.check_merged_slot_kernel``: CUDA
   flash / memory-efficient SDPA with the log-sum-exp against the explicit-mask path, 1e-3).
2. Per small model, dtype (bf16, fp32) and method: batched = alone (left padding), SDPA = eager (same
   weights), kv through the merged slot = kv through the explicit mask, all vectors finite.
3. Throughput (bf16): the default model if its package is installed, and Qwen3-4B-shaped random weights,
   ``plain`` against ``kv``, tokens/s and peak memory. Parts that would overrun ``--budget`` are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kvembed_rag import KVEmbedder, attention
from kvembed_rag.attention import ATTN_EAGER, ATTN_SDPA, check_merged_slot_kernel
from kvembed_rag.eval.throughput import random_model, run_benchmark

TEXTS = [
    "fox",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "",
    "Retrieval needs embeddings of long documents.",
    "Key and value states of the final token are re-routed as a prefix. " * 9,
]
SMALL = {
    "llama": dict(model_type="llama", num_attention_heads=8, num_key_value_heads=2),
    "gemma3": dict(
        model_type="gemma3_text",
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        sliding_window=64,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        query_pre_attn_scalar=64,
    ),
}
METHODS = ("kv", "echo", "bidirectional", "token-prepending")


def word_tokenizer() -> Any:
    """A word-level tokenizer over the check's texts (distinct ids per word, offsets for the prompts)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<bos>", "<eos>"]
    for text in [*TEXTS, "Context: Compress the Context in one word: Query: means This sentence"]:
        for word in text.replace(":", " : ").replace(".", " . ").replace('"', ' " ').split():
            if word not in words:
                words.append(word)
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def small_models(arch: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """An SDPA and an eager copy of one small random model (same weights)."""
    from transformers import AutoConfig, AutoModel

    spec = dict(SMALL[arch])
    config = AutoConfig.for_model(
        spec.pop("model_type"),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=6,
        vocab_size=512,
        max_position_embeddings=4096,
        **spec,
    )
    torch.manual_seed(0)
    built = []
    for backend in (ATTN_SDPA, ATTN_EAGER):
        torch.manual_seed(0)
        built.append(AutoModel.from_config(config, dtype=dtype, attn_implementation=backend).cuda().eval())
    built[1].load_state_dict(built[0].state_dict())
    return built[0], built[1]


def correctness(report: dict[str, Any]) -> bool:
    ok = True
    tokenizer = word_tokenizer()
    for arch in SMALL:
        for dtype in (torch.bfloat16, torch.float32):
            fast_model, eager_model = small_models(arch, dtype)
            verdict = check_merged_slot_kernel(fast_model)
            tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
            for method in METHODS:
                options: dict[str, Any] = dict(method=method, layers=[1, 2], padding_side="left", max_length=1024)
                fast = KVEmbedder(fast_model, tokenizer, **options)
                eager = KVEmbedder(eager_model, tokenizer, **options)
                batched = fast.encode(TEXTS)
                alone = np.stack([fast.encode(t) for t in TEXTS])
                against_eager = float(np.abs(batched - eager.encode(TEXTS)).max())
                line = {
                    "arch": arch,
                    "dtype": str(dtype).removeprefix("torch."),
                    "method": method,
                    "merged_slot_verdict": verdict,
                    "batched_vs_alone": float(np.abs(batched - alone).max()),
                    "sdpa_vs_eager": against_eager,
                    "finite": bool(np.isfinite(batched).all()),
                }
                if method == "kv":  # the merged slot against the explicit mask on the same model
                    key = ("cuda", dtype)
                    saved = attention.MERGE_VERDICTS.get(key)
                    attention.MERGE_VERDICTS[key] = not saved
                    other = fast.encode(TEXTS)
                    attention.MERGE_VERDICTS[key] = bool(saved)
                    line["merged_vs_explicit"] = float(np.abs(batched - other).max())
                good = line["finite"] and max(v for k, v in line.items() if k.endswith(("alone", "eager"))) < tolerance
                line["ok"] = good
                ok = ok and good
                report["correctness"].append(line)
                print(json.dumps(line), flush=True)
            del fast_model, eager_model
            torch.cuda.empty_cache()
    return ok


def throughput(report: dict[str, Any], deadline: float) -> None:
    try:
        base = KVEmbedder.from_pretrained("default", device="cuda")
    except Exception as exc:
        print(f"default model unavailable ({type(exc).__name__}: {exc}); skipping its throughput")
    else:
        _bench(report, "default (Gemma-3-270M)", base, [512, 2048, 4096], deadline)
        del base
        torch.cuda.empty_cache()
    if time.perf_counter() > deadline - 90:
        print("skipping the Qwen3-4B-shaped throughput: out of time budget")
        return
    model = random_model("qwen3-4b", device=torch.device("cuda"), dtype=torch.bfloat16)
    check_merged_slot_kernel(model)
    base = KVEmbedder(model, word_tokenizer(), layers="default", max_length=8192 + 8)
    _bench(report, "qwen3-4b (random weights)", base, [512, 2048, 4096], deadline)


def _bench(report: dict[str, Any], name: str, base: KVEmbedder, lengths: list[int], deadline: float) -> None:
    embedders = {
        "kv": KVEmbedder(base.model, base.tokenizer, method="kv", layers=base.layers, max_length=max(lengths) + 8)
    }
    for length in lengths:
        if time.perf_counter() > deadline:
            print(f"{name}: skipping {length} and longer (time budget)")
            return
        for row in run_benchmark(embedders, [length], batch_tokens=16_384, repeats=3):
            line = {"model": name, "dtype": str(base.dtype).removeprefix("torch."), **row.to_dict()}
            report["throughput"].append(line)
            print(
                f"{name:28s} {row.method:6s} {row.length:5d} tokens x {row.batch:3d}: {row.tokens_per_s:9.0f} tokens/s "
                f"({row.ratio_to_plain or 0:.3f}x plain), peak {row.peak_mb:.0f} MB",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=280.0, help="seconds before remaining parts are skipped")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device; nothing to check")
        return 0
    start = time.perf_counter()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "correctness": [],
        "throughput": [],
    }
    print(f"{report['device']}, torch {report['torch']}", flush=True)
    ok = correctness(report)
    report["merged_slot_verdicts"] = {f"{d}:{t}": v for (d, t), v in attention.MERGE_VERDICTS.items()}
    print(f"correctness {'OK' if ok else 'FAILED'} in {time.perf_counter() - start:.0f} s", flush=True)
    throughput(report, start + args.budget)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
