"""``kvembed-rag eval``: methods side by side on STS, retrieval, classification, clustering and LoCo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..methods import METHODS
from .options import (
    EXIT_OK,
    add_model_options,
    add_output_options,
    check_sample,
    creatable_folder,
    existing_path,
    fraction,
    int_list,
    load_embedder,
    method_list,
    positive_int,
    require_eval_extra,
    validate_model_args,
    writable_file,
)
from .output import EncodeProgress, status

NAME = "eval"
HELP = "Evaluate methods side by side on STS, retrieval, classification, clustering, LoCo."
TASKS = ("sts", "retrieval", "classification", "clustering", "loco")
EXAMPLES = """tasks and formats:
  sts             TSV with header sentence1<TAB>sentence2<TAB>score            -> Spearman
  retrieval       BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)   -> nDCG@10, Recall@100, MRR@10
  classification  folder with train/test .tsv (text<TAB>label) or .csv; a lone train file is split per label
                                                                 -> accuracy, macro-F1 (logistic regression)
  clustering      TSV text<TAB>label                                           -> V-measure (k-means, k = labels)
  loco            BEIR folder of long documents, or LoCoV1 files (*queries*/*documents* .jsonl or .parquet)
                                                                               -> nDCG@10 per dataset and length
examples:
  kvembed-rag eval sts ../shared/data/stsb/dev.tsv --methods kv,prompteol,mean
  kvembed-rag eval retrieval ../shared/data/scifact --limit 100 --corpus-limit 1000 --json scifact.json
  kvembed-rag eval classification ../shared/data/banking77 --limit 2000
  kvembed-rag eval loco ../shared/data/qmsum --max-length 512,1024,2048,4096 --documents 20 --plot qmsum.png
Vectors are cached per configuration (in the kvembed-rag cache), so adding a method recomputes only that one."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("paths", nargs="+", help="dataset file(s) or folder(s) in the task's format")
    parser.add_argument("--methods", default="kv,prompteol,mean", help=f"comma-separated: {','.join(METHODS)}")
    parser.add_argument("--max-length", default=None, help="tokens per input, or a list such as 512,1024,2048,4096")
    parser.add_argument(
        "--limit", type=positive_int, help="first N pairs / judged queries; a seeded sample of N texts (cls/clu)"
    )
    parser.add_argument(
        "--sample", action="store_true", help="with --limit: a seeded random N pairs / queries, not the first N"
    )
    parser.add_argument(
        "--corpus-limit", type=positive_int, help="retrieval: judged documents plus a seeded sample, N in all"
    )
    parser.add_argument(
        "--documents", type=positive_int, help="loco: a seeded sample of N documents and the queries they answer"
    )
    parser.add_argument("--split", default="dev", help="qrels split for retrieval and loco (default dev)")
    parser.add_argument("--long-docs", choices=["chunk", "truncate"], default="chunk", help="loco: over-long documents")
    parser.add_argument(
        "--test-fraction", type=fraction, default=0.25, help="classification: held-out share of a lone file"
    )
    parser.add_argument(
        "--standardize",
        action="store_true",
        help="classification: z-score the vectors (training statistics) before the regression; MTEB does not",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write one row per task x dataset x method x length to this file")
    parser.add_argument("--plot", help="draw score against --max-length to this PNG")
    parser.add_argument("--cache-dir", help="embedding cache (default: <kvembed-rag cache>/eval)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write cached vectors")
    add_output_options(parser, json_flag=False)
    add_model_options(parser, method=False, max_length=False)


def run(args: argparse.Namespace) -> int:
    require_eval_extra()
    methods = method_list(args.methods)
    lengths = int_list(args.max_length, "--max-length")
    check_sample(args)
    for path in args.paths:
        existing_path(path)
    if args.json:
        writable_file(args.json, "--json")
    if args.plot:
        writable_file(args.plot, "--plot", (".png", ".svg", ".pdf"))
        from ..plotting import require_matplotlib

        require_matplotlib()
    if args.cache_dir:
        creatable_folder(args.cache_dir, "--cache-dir")
    validate_model_args(args)
    from ..eval.cache import EmbeddingCache
    from ..eval.harness import EvalOptions, format_table, plot_length_sweep, run_evaluation

    options = EvalOptions(
        limit=args.limit,
        sample=args.sample,
        corpus_limit=args.corpus_limit,
        documents=args.documents,
        split=args.split,
        long_docs=args.long_docs,
        test_fraction=args.test_fraction,
        standardize=args.standardize,
        seed=args.seed,
    )
    show = not args.quiet
    status(f"loading model {args.model} ...", enabled=show)
    base = load_embedder(args, method="kv", max_length=max(lengths) if lengths else None)
    progress = EncodeProgress(enabled=show)
    cache = EmbeddingCache(None if args.no_cache else (args.cache_dir or "default"), progress=progress)

    def show_row(row: Any) -> None:
        progress.close()
        if show:
            print(
                f"  {row.dataset} {row.method} @{row.max_length}: {row.metric} {row.score:.4f} "
                f"({row.tokens} tokens, {row.seconds:.0f} s{', cached' if row.cached else ''})",
                file=sys.stderr,
            )

    rows = run_evaluation(
        base, args.task, args.paths, methods=methods, lengths=lengths, options=options, cache=cache, on_row=show_row
    )
    progress.close()
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in rows], indent=1) + "\n")
    if args.plot:
        plot_length_sweep(rows, args.plot)
    print(format_table(rows))
    return EXIT_OK
