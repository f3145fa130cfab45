"""``kvembed-rag bench``: throughput and peak memory of each method against the bare forward pass."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import (
    EXIT_OK,
    add_model_options,
    int_list,
    load_embedder,
    method_list,
    positive_int,
    validate_model_args,
    writable_file,
)

NAME = "bench"
HELP = "Throughput and peak memory of each method against the bare forward pass."
EXAMPLES = """examples:
  kvembed-rag bench                                   # default model, CPU: plain vs every method
  kvembed-rag bench --lengths 512,4096 --methods kv,echo --json bench.json --plot bench.png
  kvembed-rag bench --shape qwen3-4b --device cuda    # a paper backbone's shape, random weights, bf16"""

#: kvembed_rag.eval.throughput.PAPER_SHAPES, listed here so --help and --shape checks need no torch
SHAPES = ("qwen3-4b", "mistral-7b", "llama-3.1-8b")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default="128,512,2048,4096", help="tokens per text (default 128,512,2048,4096)")
    parser.add_argument("--methods", default="kv,prompteol,mean,echo,bidirectional,token-prepending")
    parser.add_argument("--shape", choices=SHAPES, help="random weights of a paper backbone's shape")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--plot", help="draw tokens/s and memory against length to this PNG")
    parser.add_argument("-q", "--quiet", action="store_true", help="only results and errors")
    add_model_options(parser, method=False, max_length=False)


def run(args: argparse.Namespace) -> int:
    lengths = int_list(args.lengths, "--lengths") or []
    methods = method_list(",".join(m for m in args.methods.split(",") if m.strip() != "plain"))
    if args.json:
        writable_file(args.json, "--json")
    if args.plot:
        writable_file(args.plot, "--plot", (".png", ".svg", ".pdf"))
        from ..plotting import require_matplotlib

        require_matplotlib()
    if not args.shape:
        validate_model_args(args)
    import torch

    from ..config import option_default
    from ..embedder import KVEmbedder
    from ..eval.throughput import check_targets, placeholder_tokenizer, plot_rows, random_model, run_benchmark
    from ..loading import pick_device, pick_dtype
    from ..plotting import bench_title

    if args.shape:
        device = pick_device(args.device)
        model = random_model(args.shape, device=device, dtype=pick_dtype(args.dtype, device))
        base = KVEmbedder(
            model,
            placeholder_tokenizer(),
            layers="default",
            max_length=max(lengths) * 2 + 8,
            batch_tokens=args.batch_tokens or option_default("batch_tokens"),
        )
        label = f"{args.shape} (random weights)"
    else:
        base = load_embedder(args, layers="default", max_length=max(lengths) * 2 + 8)
        label = base.source.spec
    embedders = {m: base.variant(method=m) for m in methods}
    batch_tokens = base.batch_tokens
    rows = run_benchmark(embedders, lengths, batch_tokens=batch_tokens, repeats=args.repeats)
    device_name = torch.cuda.get_device_name(base.device) if base.device.type == "cuda" else "cpu"
    meta = {
        "model": label,
        "device": device_name,
        "dtype": str(base.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch_tokens": batch_tokens,
        "kv_layers": base.layers,
    }
    targets = check_targets(rows)
    if args.json:
        payload = {"meta": meta, "rows": [r.to_dict() for r in rows], "targets": targets}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.plot:
        plot_rows(rows, args.plot, bench_title(meta))
    print(
        f"{label} on {device_name} ({meta['dtype']}), {batch_tokens} padded tokens per batch, kv layers {base.layers}"
    )
    print(f"{'method':18s} {'length':>6s} {'batch':>5s} {'tokens/s':>10s} {'x plain':>8s} {'peak MB':>9s}")
    for r in rows:
        print(
            f"{r.method:18s} {r.length:6d} {r.batch:5d} {r.tokens_per_s:10.0f} {r.ratio_to_plain or 0:8.3f} "
            f"{r.peak_mb:9.1f}"
        )
    for check in targets:
        verdict = "met" if check["ok"] else "MISSED"
        print(f"target {check['target']:28s} @{check['length']:<5d} {check['value']:6.3f}  {verdict}")
    return EXIT_OK
