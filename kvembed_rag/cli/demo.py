"""``kvembed-rag demo``: index Python's module docs with the default model and answer questions."""

from __future__ import annotations

import argparse
import time

from .options import (
    EXIT_OK,
    add_model_options,
    add_output_options,
    creatable_folder,
    load_embedder,
    positive_int,
    validate_model_args,
)
from .output import BuildProgress, print_hits, status

NAME = "demo"
HELP = "Index Python's module docs with the default model and answer questions."
EXAMPLES = """examples:
  kvembed-rag demo
  kvembed-rag demo --question "How do I read a CSV file?" -k 5
  kvembed-rag demo --limit 4                  # a quick look: 4 of the 19 pages
The index is kept in the kvembed-rag cache (one per embedder and passage size): a second run embeds nothing."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="index directory (default: in the kvembed-rag cache; reused next time)")
    parser.add_argument("--question", action="append", help="ask your own question (repeatable)")
    parser.add_argument("--limit", type=positive_int, help="index only the first N of the 19 module pages")
    parser.add_argument("-k", type=positive_int, default=3, help="documents per question, >= 1 (default 3)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild the demo index from scratch")
    add_output_options(parser, json_flag=False)
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from ..config import PASSAGE_TOKENS
    from ..demo import DEMO_BATCH_TOKENS, DEMO_MAX_LENGTH, default_demo_dir, demo_documents, run_demo
    from ..retrieval.chunking import passage_input_tokens

    chosen = creatable_folder(args.out, "--out") if args.out else None
    validate_model_args(args)
    show = not args.quiet
    start = time.perf_counter()
    print("kvembed-rag demo: KV-Embedding over Python's own module documentation (pydoc), offline.")
    documents = demo_documents(args.limit)
    status(f"corpus: {len(documents)} module pages rendered; loading model {args.model} ...", enabled=show)
    embedder = load_embedder(
        args, max_length=args.max_length or DEMO_MAX_LENGTH, batch_tokens=args.batch_tokens or DEMO_BATCH_TOKENS
    )
    loaded = time.perf_counter() - start
    # the default index lives per embedder fingerprint: a changed default (method, post-processing ...) builds
    # its own index next to the old one instead of refusing it
    # (and per passage size: the chunking is not part of the fingerprint)
    out = chosen or default_demo_dir(embedder.method) / f"{embedder.fingerprint}-p{PASSAGE_TOKENS}"
    print(
        f"model: {embedder.source.spec} ({embedder.describe()['architecture']}, {embedder.num_layers} layers), "
        f"method {embedder.method}, layers {embedder.layers}, ready after {loaded:.1f} s"
    )
    print(
        f"corpus: {len(documents)} module pages in passages of up to {passage_input_tokens(embedder)} tokens with "
        "the prompt (as 'kvembed-rag index' makes them), dense kv + BM25 fused; a page ranks by its best passage"
    )
    progress = BuildProgress("indexing", len(documents), enabled=show)
    result = run_demo(
        embedder,
        out,
        documents=documents,
        questions=args.question,
        k=args.k,
        progress=progress,
        overwrite=args.overwrite,
    )
    progress.close()
    report = result.report
    print(
        f"index: {report.embedded} embedded, {report.skipped} reused from {out} "
        f"({report.tokens:,} tokens in {report.seconds:.1f} s)"
    )
    for answer in result.answers:
        print_hits(answer.question, answer.hits, answer.seconds, expected=answer.expected)
        if answer.expected and answer.rank is None:
            print(f"     (expected {' or '.join(answer.expected)}: not in the top {args.k})")
    if not args.question:
        print(f"\n{result.found} of {len(result.answers)} questions found their expected page in the top {args.k}.")
    print(
        f"\ntotal {time.perf_counter() - start:.1f} s. Next: kvembed-rag index YOUR_FOLDER --out my-index; "
        'kvembed-rag search my-index "your question"'
    )
    return EXIT_OK
