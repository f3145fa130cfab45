"""``kvembed-rag bench``: throughput and peak memory of each method against the bare forward pass."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import (
    EXIT_OK,
    UsageError,
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
    parser.add_argument(
        "--dtypes",
        help="several dtypes in one interleaved run, e.g. float32,bfloat16",
    )
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

    from ..eval.throughput import (
        measure_peaks,
        plot_dtype_rows,
        plot_rows,
        run_dtype_benchmark,
    )
    from ..hardware import auto_dtype, describe_hardware, hardware_line
    from ..plotting import bench_title

    requested = [d.strip() for d in (args.dtypes or args.dtype or "auto").split(",") if d.strip()]
    groups: dict[str, dict[str, Any]] = {}
    bases: dict[str, Any] = {}
    for dtype in requested:
        base = _base_embedder(args, dtype, lengths)
        label = str(base.dtype).removeprefix("torch.")
        if label in groups:
            raise UsageError(f"--dtypes names {label} twice (auto resolves to {label} here); list each dtype once")
        bases[label] = base
        groups[label] = {m: base.variant(method=m) for m in methods}
    first = next(iter(bases.values()))
    device = first.device
    auto = str(auto_dtype(device)[0]).removeprefix("torch.")
    model_label = f"{args.shape} (random weights)" if args.shape else first.source.spec
    batch_tokens = first.batch_tokens
    peaks = measure_peaks(list(groups), device)
    rows = run_dtype_benchmark(groups, lengths, batch_tokens=batch_tokens, repeats=args.repeats, peaks=peaks)
    after = measure_peaks(list(groups), device)  # the best of before and after: load changes during a run
    for row in rows:
        peaks[row.dtype] = max(peaks[row.dtype], after[row.dtype])
    for row in rows:
        if row.gflops is not None:
            row.peak_fraction = row.gflops / peaks[row.dtype]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    hardware = describe_hardware(device)
    meta = {
        "model": model_label,
        "device": device_name,
        "dtype": ",".join(groups),
        "threads": torch.get_num_threads(),
        "batch_tokens": batch_tokens,
        "kv_layers": first.layers,
        "auto_dtype": auto,
        "hardware": hardware,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "peak_shape": "2048x640 @ 640x2048",
        "flops_formula": "2*linear_weights + sum_layers 4*heads*head_dim*mean_visible_keys per processed token",
    }
    if args.json:
        payload = {"meta": meta, "rows": [r.to_dict() for r in rows]}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.plot:
        (plot_dtype_rows if len(groups) > 1 else plot_rows)(rows, args.plot, bench_title(meta))
    print(
        f"{model_label} on {device_name} ({meta['dtype']}), {batch_tokens} padded tokens per batch, "
        f"kv layers {first.layers}"
    )
    print(f"hardware: {hardware_line(hardware)}")
    print("matmul peak (2048x640 @ 640x2048): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(
        f"{'method':18s} {'dtype':>8s} {'length':>6s} {'batch':>5s} {'tokens/s':>10s} {'x plain':>8s} "
        f"{'GFLOP/s':>8s} {'of peak':>7s} {'peak MB':>9s}"
    )
    for r in rows:
        print(
            f"{r.method:18s} {r.dtype:>8s} {r.length:6d} {r.batch:5d} {r.tokens_per_s:10.0f} "
            f"{r.ratio_to_plain or 0:8.3f} {r.gflops or 0:8.1f} {r.peak_fraction or 0:7.1%} {r.peak_mb:9.1f}"
        )
    if len(groups) > 1:
        print("speed ratios are from one interleaved run; quality per dtype: python benchmarks/dtype_quality.py")
    return EXIT_OK


def _base_embedder(args: argparse.Namespace, dtype: str | None, lengths: list[int]) -> Any:
    """The base embedder of one dtype label."""

    from ..config import option_default
    from ..embedder import KVEmbedder
    from ..eval.throughput import placeholder_tokenizer, random_model
    from ..loading import pick_device, pick_dtype

    max_length = max(lengths) * 2 + 8
    if args.shape:
        device = pick_device(args.device)
        model = random_model(args.shape, device=device, dtype=pick_dtype(dtype, device))
        batch_tokens = args.batch_tokens or option_default("batch_tokens")
        return KVEmbedder(
            model, placeholder_tokenizer(), layers="default", max_length=max_length, batch_tokens=batch_tokens
        )
    return load_embedder(args, layers="default", max_length=max_length, dtype=dtype)
