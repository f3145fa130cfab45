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
    UsageError,
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
HELP = "Evaluate methods side by side on STS, retrieval, classification, clustering, LoCo, passages."
TASKS = ("sts", "retrieval", "classification", "clustering", "loco", "passages")
EXAMPLES = """tasks and formats:
  sts             TSV with header sentence1<TAB>sentence2<TAB>score            -> Spearman
  retrieval       BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)   -> nDCG@10, Recall@100, MRR@10
  classification  folder with train/test .tsv (text<TAB>label) or .csv; a lone train file is split per label
                                                                 -> accuracy, macro-F1 (logistic regression)
  clustering      TSV text<TAB>label                                           -> V-measure (k-means, k = labels)
  loco            BEIR folder of long documents, or LoCoV1 files (*queries*/*documents* .jsonl or .parquet)
                                                                               -> nDCG@10 per dataset and length
  passages        qmsum_spans folder (meetings.jsonl + queries.jsonl with turn spans) or a generic one
                  (documents.jsonl {id,text,title?} + queries.jsonl {id,query,document,answers:[[start,end]]},
                  character offsets, end exclusive): passages of whole turns/lines over every sampled document
                  -> passage nDCG@10, Recall@5/20, document-level by best passage; rows: BM25, each method,
                     hybrid method+BM25 per --hybrid, sentence-transformers --anchors
examples:
  kvembed-rag eval sts ../shared/data/stsb/dev.tsv --methods kv,prompteol,mean
  kvembed-rag eval retrieval ../shared/data/scifact --limit 100 --corpus-limit 1000 --json scifact.json
  kvembed-rag eval classification ../shared/data/banking77 --limit 2000
  kvembed-rag eval loco ../shared/data/qmsum --max-length 512,1024,2048,4096 --documents 20 --plot qmsum.png
  kvembed-rag eval passages ../shared/data/qmsum_spans --documents 12 --passage-sample A --anchors all-MiniLM-L6-v2
Vectors are cached per configuration (in the kvembed-rag cache), so adding a method recomputes only that one."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("paths", nargs="+", help="dataset file(s) or folder(s) in the task's format")
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated: {','.join(METHODS)} (default kv,prompteol,mean; passages: kv; 'none': no model)",
    )
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
        "--documents",
        type=positive_int,
        help="loco, passages: a seeded sample of N documents and the queries they answer (passages: default 12)",
    )
    passages = parser.add_argument_group("passages")
    passages.add_argument(
        "--passage-sample",
        choices=list("ABCDEFGHIJKLMNOPQRSTUVWX"),  # eval.passages.SAMPLES, listed so --help imports no numpy
        default="A",
        help="which of the disjoint seeded samples (A chooses, B-X confirm; default A)",
    )
    passages.add_argument("--passage-split", help="only documents of this split (qmsum_spans: train or val)")
    passages.add_argument("--passage-tokens", type=positive_int, default=256, help="tokens per passage (256)")
    passages.add_argument(
        "--passage-overlap", type=int, default=0, help="tokens of whole units shared by neighbours (0)"
    )
    passages.add_argument("--passage-header", action="store_true", help="start each passage with its document's title")
    passages.add_argument(
        "--child-tokens",
        type=int,
        default=256,
        metavar="N",
        help="passages longer than N tokens: also rows scored by each passage's best N-token piece, alone and fused "
        "(small-to-big, 'index --child-tokens N'; default 256 = CHILD_TOKENS; 0: none)",
    )
    passages.add_argument(
        "--hybrid",
        default="weighted:0.5+feedback:0+document:0,weighted:0.5+document:0,weighted:0.5",
        help="fusions of the first method with BM25, FUSION:BM25_WEIGHT[+feedback:N][+document:W] (default N 5, W 0.5: "
        "the shipped path), comma-separated; default: the plain fusion, with feedback, shipped; 'none': no hybrid rows",
    )
    passages.add_argument(
        "--bm25",
        metavar="k1=K,b=B",
        help="the hybrid rows' BM25 parameters (default the index's: k1=2,b=0.5); the reference row stays k1 1.2, "
        "b 0.75, and a row shows BM25 alone with these",
    )
    passages.add_argument(
        "--anchors", default="", help="sentence-transformers models to add as rows, e.g. all-MiniLM-L6-v2 (optional)"
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
    if args.task == "passages":
        return run_passages(args)
    methods = method_list(args.methods or "kv,prompteol,mean")
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


def run_passages(args: argparse.Namespace) -> int:
    """``eval passages``: BM25, dense methods, their hybrid and anchors on passage-level retrieval."""
    methods = [] if (args.methods or "kv").strip().lower() == "none" else method_list(args.methods or "kv")
    for path in args.paths:
        existing_path(path)
    if args.json:
        writable_file(args.json, "--json")
    if args.child_tokens != 0 and args.child_tokens < 16:
        raise UsageError(f"--child-tokens must be 0 or at least 16; got {args.child_tokens}")
    if not 0 <= args.passage_overlap < args.passage_tokens:
        raise UsageError(f"--passage-overlap must be >= 0 and below --passage-tokens; got {args.passage_overlap}")
    from ..errors import ConfigError
    from ..retrieval.lexical import BM25Params, HybridConfig

    hybrid = tuple(h.strip() for h in args.hybrid.split(",") if h.strip() and h.strip().lower() != "none")
    try:
        for spec in hybrid:
            HybridConfig.parse(spec)
    except ConfigError as exc:
        raise UsageError(f"--hybrid: {exc}") from None
    try:
        BM25Params.parse(args.bm25)
    except ConfigError as exc:
        raise UsageError(f"--bm25: {exc}") from None
    anchors = tuple(a.strip() for a in args.anchors.split(",") if a.strip())
    if args.cache_dir:
        creatable_folder(args.cache_dir, "--cache-dir")
    validate_model_args(args)
    from ..eval.cache import EmbeddingCache
    from ..eval.harness import format_table
    from ..eval.passages import PassageOptions, evaluate_passages

    options = PassageOptions(
        documents=args.documents or 12,
        sample=args.passage_sample,
        split=args.passage_split,
        seed=args.seed,
        size=args.passage_tokens,
        overlap=args.passage_overlap,
        header=args.passage_header,
        hybrid=hybrid,
        anchors=anchors,
        child_tokens=args.child_tokens,
        bm25=args.bm25,
    )
    show = not args.quiet
    base = None
    progress = EncodeProgress(enabled=show)
    if methods:
        status(f"loading model {args.model} ...", enabled=show)
        # room for a passage of --passage-tokens (as counted in its document), its header and the prompt; htp adds
        # two tokens per sentence (a sentence of a token or two is rare: room for one per two tokens)
        room = args.passage_tokens + 64 + (args.passage_tokens if "htp" in methods else 0)
        base = load_embedder(args, method=methods[0], max_length=room)
    cache = EmbeddingCache(None if args.no_cache else (args.cache_dir or "default"), progress=progress)

    def show_row(row: Any) -> None:
        progress.close()
        if show:
            print(f"  {row.dataset} {row.method}: ndcg@10 {row.score:.4f} ({row.seconds:.0f} s)", file=sys.stderr)

    rows = []
    for path in args.paths:
        try:
            rows += evaluate_passages(path, base, methods=methods, options=options, cache=cache, on_row=show_row)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    progress.close()
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in rows], indent=1) + "\n")
    print(format_table(rows))
    return EXIT_OK
