"""``kvembed-rag select-layers``: each layer's intrinsic dimension and the re-routing window it picks (with
``--proxy``, beside it the label-free half-text retrieval score of the window starting at each layer), and the
middle-depth window, which is what ``layers="auto"`` uses."""

from __future__ import annotations

import argparse
import json

from .options import (
    EXIT_OK,
    UsageError,
    add_model_options,
    add_output_options,
    existing_path,
    load_embedder,
    validate_model_args,
    writable_file,
)
from .output import status

NAME = "select-layers"
HELP = "Show the layer rules' windows: intrinsic dimension per layer, the proxy, the middle rule ('auto')."
EXAMPLES = """examples:
  kvembed-rag select-layers
  kvembed-rag select-layers --model ./SmolLM2-135M-Instruct.Q4_1.gguf --plot id.png
  kvembed-rag select-layers --calibration my_corpus.txt --json
  kvembed-rag select-layers --proxy      # also the half-text retrieval proxy per window (slower)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calibration", help="one text per line (or .jsonl with 'text'); default: the shipped set")
    parser.add_argument("--plot", help="draw the ID curve to this PNG (its folder must exist)")
    parser.add_argument("--raw", action="store_true", help="use raw hidden states instead of L2-normalised ones")
    parser.add_argument("--no-cache", action="store_true", help="recompute and do not write the cache")
    parser.add_argument(
        "--proxy",
        action="store_true",
        help="also score each candidate window by half-text retrieval (first half of a calibration text finds "
        "its second half; MRR) and show the window it picks; embeds the texts once per window",
    )
    add_output_options(parser)
    add_model_options(parser, method=False)


def run(args: argparse.Namespace) -> int:
    if args.calibration:
        existing_path(args.calibration, "calibration file")
    if args.plot:
        writable_file(args.plot, "--plot", (".png", ".svg", ".pdf"))
        from ..plotting import require_matplotlib

        require_matplotlib()  # before the model loads, not after the curve is computed
    if args.layers is not None:  # every layer is measured; a window of the user's would be silently ignored
        raise UsageError("select-layers measures every layer and prints each rule's window; drop --layers")
    validate_model_args(args)
    from ..layer_selection import first_candidate_layer, load_calibration, middle_window, plot_curve, select_layers

    try:
        texts = load_calibration(args.calibration)
    except ValueError as exc:  # not UTF-8, bad JSON
        raise UsageError(str(exc)) from exc
    if len(texts) < 3:
        raise UsageError(f"{args.calibration}: needs at least 3 calibration texts; found {len(texts)}")
    status(f"loading model {args.model} ...", enabled=not args.quiet)
    embedder = load_embedder(args, method="kv", layers="default")
    status(f"measuring {len(texts)} calibration texts in {embedder.num_layers} layers ...", enabled=not args.quiet)
    selection = select_layers(embedder, texts, normalize=not args.raw, use_cache=not args.no_cache)
    proxy = None
    if args.proxy:
        status("scoring the proxy: half-text retrieval per candidate window ...", enabled=not args.quiet)
        proxy = select_layers(embedder, texts, use_cache=not args.no_cache, rule="proxy")
    if args.plot:
        from ..plotting import model_name

        name = model_name(embedder.source.to_dict())
        plot_curve(
            selection,
            args.plot,
            title=f"{name}: TwoNN ID of last-token states ({selection.n_texts} calibration texts)",
        )
    if args.json:
        extra = {"proxy": proxy.to_dict()} if proxy is not None else {}
        payload = {**selection.to_dict(), "model": embedder.describe()["model"], "plot": args.plot}
        print(json.dumps({**payload, "middle": middle_window(embedder.num_layers), **extra}))
        return EXIT_OK
    print(
        f"model {embedder.source.spec} ({embedder.num_layers} layers), {selection.n_texts} calibration texts, "
        f"{'L2-normalised' if selection.normalized else 'raw'} states{' (cached)' if selection.cached else ''}"
    )
    skip = first_candidate_layer(embedder.num_layers)
    finite = [v for v in selection.curve if v == v]
    top = max(finite) if finite else 1.0
    for layer, value in enumerate(selection.curve):
        mark = "*" if layer in selection.layers else ("-" if layer < skip else " ")
        bar = "#" * int(40 * value / top) if value == value else "(n/a)"
        if proxy is not None:
            score = proxy.curve[layer]
            mark += "p" if layer in proxy.layers else " "
            bar = (f"proxy MRR {score:.4f}  " if score == score else " " * 22) + bar
        print(f"{mark} layer {layer:3d}  ID {value:7.2f}  {bar}")
    print(f"ID rule (layers='id'): {selection.layers}  (* chosen, - skipped: first 20%)")
    if proxy is not None:
        print(
            f"proxy rule: {proxy.layers} (p; MRR of the window starting at each layer, {proxy.n_texts} half-text "
            f"pairs; re-routing off: {proxy.off:.4f}){' (cached)' if proxy.cached else ''}"
        )
    print(
        f"middle rule: {middle_window(embedder.num_layers)} (layers='auto' and 'middle': the middle of the depth, no "
        "measurement; the only rule that found the label-scored winner on both offline models)"
    )
    if args.plot:
        print(f"plot: {args.plot}")
    return EXIT_OK
