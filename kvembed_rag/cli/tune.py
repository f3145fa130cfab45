"""``kvembed-rag tune``: grid-search the re-routing window and bias on a dev set; save the winner."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .options import (
    EXIT_OK,
    UsageError,
    add_model_options,
    add_output_options,
    check_sample,
    existing_path,
    load_embedder,
    parse_windows,
    positive_int,
    validate_model_args,
    writable_file,
)
from .output import EncodeProgress, status

NAME = "tune"
HELP = "Grid-search the re-routing window and bias on a dev set; save the winner."
EXAMPLES = """examples:
  kvembed-rag tune sts ../shared/data/stsb/dev.tsv --limit 300 --sample   # a random 300, all genres
  kvembed-rag tune retrieval my-beir-dev --windows "4,5;8,9;14,15" --biases 0,1,2,4 --json grid.json
  kvembed-rag tune sts dev.tsv --reset          # forget the tuned choice for this model
The winner is saved in the store of tuned defaults: embedders built with layers='tuned' use its window (and its
bias and pooling unless given); layers='auto' stays the intrinsic-dimension window on every machine."""

POOLINGS = ("hybrid", "last", "mean")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["sts", "retrieval"])
    parser.add_argument("path", help="an STS TSV or a BEIR folder (see 'kvembed-rag eval --help')")
    parser.add_argument("--windows", help="windows to try, e.g. '4,5;8,9' (default: sliding windows from 20%% depth)")
    parser.add_argument("--width", type=positive_int, help="layers per default window (default: the ID window's)")
    parser.add_argument("--stride", type=positive_int, help="layers between default windows (default: ~8 windows)")
    parser.add_argument("--biases", default="0,1,2", help="biases to try (default 0,1,2)")
    parser.add_argument("--poolings", default="hybrid", help="poolings to try, e.g. hybrid,last (default hybrid)")
    parser.add_argument(
        "--limit",
        type=positive_int,
        help="first N pairs or judged queries, in file order: a dev file sorted by genre (STS-B is) gives a "
        "biased tuning set, so add --sample (or shuffle the file)",
    )
    parser.add_argument(
        "--sample", action="store_true", help="with --limit: a seeded random N pairs / queries, not the first N"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample and --corpus-limit (default 0)")
    parser.add_argument(
        "--corpus-limit", type=positive_int, help="retrieval: judged documents plus a seeded sample, N in all"
    )
    parser.add_argument("--split", default="dev")
    parser.add_argument("--json", help="write the grid and the winner to this file")
    parser.add_argument("--no-save", action="store_true", help="print the grid without changing the model's default")
    parser.add_argument("--reset", action="store_true", help="delete this model's tuned default and exit")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached vectors")
    add_output_options(parser, json_flag=False)
    add_model_options(parser, method=False, max_length=False)


def run(args: argparse.Namespace) -> int:
    try:
        biases = [float(b) for b in args.biases.split(",") if b.strip()]
    except ValueError as exc:
        raise UsageError(f"--biases must be comma-separated numbers; got {args.biases!r}") from exc
    if not biases:
        raise UsageError("--biases needs at least one number")
    windows = parse_windows(args.windows)
    poolings = [x.strip() for x in args.poolings.split(",") if x.strip()]
    if not poolings or set(poolings) - set(POOLINGS):
        raise UsageError(f"--poolings takes {', '.join(POOLINGS)}; got {args.poolings!r}")
    existing_path(args.path)
    if not args.reset:
        check_sample(args)
    if args.json:
        writable_file(args.json, "--json")
    validate_model_args(args)
    from ..eval.cache import EmbeddingCache
    from ..eval.harness import EvalOptions
    from ..eval.tuning import candidate_windows, format_grid, tune
    from ..tuned import forget_tuned

    show = not args.quiet
    status(f"loading model {args.model} ...", enabled=show and not args.reset)
    base = load_embedder(args, method="kv")
    if args.reset:
        target = forget_tuned(base.source, base.num_layers)
        print(f"removed {target}; layers='tuned' has nothing to use until the next 'kvembed-rag tune'")
        return EXIT_OK
    if windows is None:
        try:
            windows = candidate_windows(base.num_layers, args.width or len(base.layers), args.stride)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    options = EvalOptions(
        limit=args.limit, sample=args.sample, corpus_limit=args.corpus_limit, split=args.split, seed=args.seed
    )
    progress = EncodeProgress(enabled=show)
    cache = EmbeddingCache(None if args.no_cache else "default", progress=progress)
    total = (len(windows) + (list(base.layers) not in windows)) * len(biases) * len(poolings) + 1

    def show_point(point: Any) -> None:
        progress.close()
        if show:
            print(f"  layers {point.layers} bias {point.bias:g} {point.pooling}: {point.score:.4f}", file=sys.stderr)

    status(f"tuning {total} configurations on {args.path} ...", enabled=show)
    result = tune(
        base,
        args.task,
        args.path,
        windows=windows,
        biases=biases,
        poolings=poolings,
        options=options,
        cache=cache,
        save=not args.no_save,
        on_point=show_point,
    )
    progress.close()
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    print(format_grid(result))
    if result.saved_to:
        print(f"saved as this model's tuned default: use it with --layers tuned (layers='tuned'): {result.saved_to}")
    return EXIT_OK
