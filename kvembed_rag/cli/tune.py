"""``kvembed-rag tune``: grid-search the re-routing window and bias on a dev set; save the winner."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..config import POOLINGS
from .options import (
    EXIT_OK,
    UsageError,
    add_model_options,
    add_output_options,
    existing_path,
    load_embedder,
    parse_windows,
    positive_int,
    require_eval_extra,
    validate_model_args,
    writable_file,
)
from .output import EncodeProgress, status

NAME = "tune"
HELP = "Grid-search the re-routing window, bias, pooling and post-processing on dev data; save the winner."
EXAMPLES = """examples:
  kvembed-rag tune sts ../shared/data/stsb/dev.tsv --limit 300 --sample   # a random 300, all genres
  kvembed-rag tune retrieval my-beir-dev --windows "4,5;8,9;14,15" --biases 0,1,2,4 --json grid.json
  kvembed-rag tune mixed --sts ../shared/data/stsb/dev.tsv --retrieval ../shared/data/scifact \\
      --classification ../shared/data/banking77/train.csv --clustering ../shared/data/banking77/train.csv \\
      --windows "4,5;8,9" --poolings hybrid,last --postprocess none,center,whiten:0.3 \\
      --limit sts=300,retrieval=30,classification=200,clustering=300 --corpus-limit 300 --sample
  kvembed-rag tune sts dev.tsv --reset          # forget the tuned choice for this model
The winner is saved in the store of tuned defaults: embedders built with layers='tuned' use its window (and its
bias, pooling and post-processing unless given); layers='auto' stays the middle-depth window on every
machine. Every point is ranked on each dev task; the lowest mean rank wins (one task: the best score; ties: the
first in the grid). 'mixed' takes one dev set per family."""

FAMILIES = ("sts", "retrieval", "classification", "clustering")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=[*FAMILIES, "mixed"])
    parser.add_argument(
        "path",
        nargs="?",
        help="one family's dev data: an STS TSV, a BEIR folder or labelled texts (see 'kvembed-rag eval --help')",
    )
    mixed = parser.add_argument_group("mixed: one dev set per task family (at least one)")
    mixed.add_argument("--sts", help="an STS TSV (Spearman)")
    mixed.add_argument("--retrieval", help="a BEIR folder (nDCG@10)")
    mixed.add_argument(
        "--classification",
        help="labelled texts (text<TAB>label, or CSV with text and label/category; one file is split per label): "
        "logistic regression on the vectors, accuracy",
    )
    mixed.add_argument("--clustering", help="labelled texts (as --classification): k-means V-measure on the labels")
    parser.add_argument("--top", type=positive_int, default=10, help="points shown in the table (default 10)")
    parser.add_argument("--windows", help="windows to try, e.g. '4,5;8,9' (default: sliding windows from 20%% depth)")
    parser.add_argument("--width", type=positive_int, help="layers per default window (default: the ID window's)")
    parser.add_argument("--stride", type=positive_int, help="layers between default windows (default: ~8 windows)")
    parser.add_argument("--biases", default="0,1,2", help="biases to try (default 0,1,2)")
    parser.add_argument("--poolings", default="hybrid", help="poolings to try, e.g. hybrid,last (default hybrid)")
    parser.add_argument(
        "--postprocess",
        dest="postprocesses",
        metavar="KINDS",
        help="post-processings to try, e.g. none,center,whiten:0.3 (each fitted on the calibration texts; "
        "default: the embedder's own, and the saved default then leaves it to postprocess='auto')",
    )
    parser.add_argument(
        "--limit",
        help="first N pairs or judged queries, in file order: a dev file sorted by genre (STS-B is) gives a "
        "biased tuning set, so add --sample (or shuffle the file); mixed: N for every task or per task, e.g. "
        "sts=300,retrieval=30,classification=200 (classification and clustering are always seeded samples)",
    )
    parser.add_argument(
        "--sample", action="store_true", help="with --limit: a seeded random N pairs / queries, not the first N"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every sample and of k-means (default 0)")
    parser.add_argument(
        "--corpus-limit", type=positive_int, help="retrieval: judged documents plus a seeded sample, N in all"
    )
    parser.add_argument("--split", default="dev")
    parser.add_argument("--json", help="write the grid and the winner to this file")
    parser.add_argument("--no-save", action="store_true", help="print the grid without changing the model's default")
    parser.add_argument("--reset", action="store_true", help="delete this model's tuned default and exit")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached vectors")
    add_output_options(parser, json_flag=False)
    add_model_options(parser, method=False, max_length=False, postprocess=False)


def _limits(text: str | None, task: str) -> dict[str, int | None]:
    """``--limit``: N, or (mixed) ``family=N`` pairs; returns the limit per family (key ``""``: every task)."""
    if text is None:
        return {}

    def number(value: str) -> int:
        try:
            return positive_int(value)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--limit: {exc}") from None

    if "=" not in text:
        return {"": number(text.strip())}
    if task != "mixed":
        raise UsageError(f"--limit takes one number for 'tune {task}'; got {text!r}")
    limits: dict[str, int | None] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        family, sep, value = part.partition("=")
        if not sep or family.strip() not in FAMILIES:
            raise UsageError(f"--limit takes N or family=N pairs ({', '.join(FAMILIES)}), e.g. sts=300; got {part!r}")
        limits[family.strip()] = number(value.strip())
    return limits


def _postprocesses(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from ..eval.tuning import check_postprocess

    try:
        return check_postprocess([x.strip() for x in text.split(",") if x.strip()])
    except ValueError as exc:
        raise UsageError(f"--postprocess: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    require_eval_extra()
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
    mixed = args.task == "mixed"
    given = {family: getattr(args, family) for family in FAMILIES if getattr(args, family)}
    if mixed:
        if args.path is not None:
            raise UsageError(f"'tune mixed' takes its data from --{' --'.join(FAMILIES)}, not a path ({args.path})")
        if not given and not args.reset:
            raise UsageError(f"'tune mixed' needs at least one dev set: --{', --'.join(FAMILIES)}")
        paths = given
    else:
        if args.path is None:
            raise UsageError(f"'tune {args.task}' needs the dev data's path (e.g. an STS TSV or a BEIR folder)")
        if given:
            raise UsageError(f"--{', --'.join(given)} belong to 'tune mixed'; 'tune {args.task}' reads {args.path}")
        paths = {args.task: args.path}
    for family, path in paths.items():
        existing_path(path, f"file or folder (--{family})" if mixed else "file or folder")
    limits = _limits(args.limit, args.task)
    args.limit = limits.pop("", None)  # one N for every task; the rest per family
    if not args.reset:
        if args.sample and args.limit is None and not limits:
            raise UsageError("--sample picks --limit N pairs or queries at random; give --limit too")
        unused = set(limits) - set(paths)
        if unused:
            raise UsageError(f"--limit names {', '.join(sorted(unused))}, which has no dev set (--{sorted(unused)[0]})")
    postprocesses = _postprocesses(args.postprocesses)
    if args.json:
        writable_file(args.json, "--json")
    validate_model_args(args)
    from ..eval.cache import EmbeddingCache
    from ..eval.harness import EvalOptions
    from ..eval.tuning import candidate_windows, format_tune, tune
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
    points = (len(windows) + (list(base.layers) not in windows)) * len(biases) * len(poolings) + len(poolings)
    variants = len(postprocesses or [None])

    def show_point(point: Any) -> None:
        progress.close()
        if not show:
            return
        head = f"  layers {point.layers} bias {point.bias:g} {point.pooling}"
        if variants > 1:
            head += f" {point.postprocess}"
        scores = ", ".join(f"{task} {score:.4f}" for task, score in point.scores.items())
        print(f"{head}: {scores}", file=sys.stderr)

    where = ", ".join(f"{family} {path}" for family, path in paths.items())
    status(f"tuning {points} configurations x {variants} post-processing(s) on {where} ...", enabled=show)
    common: dict[str, Any] = {
        "windows": windows,
        "biases": biases,
        "poolings": poolings,
        "postprocesses": postprocesses,
        "options": options,
        "cache": cache,
        "save": not args.no_save,
        "on_point": show_point,
    }
    result = tune(base, paths, limits=limits, **common)
    progress.close()
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    print(format_tune(result, args.top))
    if result.saved_to:
        print(f"saved as this model's tuned default: use it with --layers tuned (layers='tuned'): {result.saved_to}")
    return EXIT_OK
