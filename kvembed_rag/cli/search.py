"""``kvembed-rag search``: ranked documents from an index, with scores, ids and snippets."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .options import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_model_options,
    add_output_options,
    hybrid_flag,
    positive_int,
    quiet_libraries,
)
from .output import print_hits

NAME = "search"
HELP = "Search an index: ranked documents with scores, ids and snippets."
EXAMPLES = """examples:
  kvembed-rag search my-index "how do I rotate log files?"
  kvembed-rag search my-index "query one" "query two" -k 3 --json"""

MANIFEST = "manifest.json"  # kvembed_rag.retrieval.vector_index.MANIFEST, without importing numpy for a usage check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index directory written by 'index'")
    parser.add_argument("query", nargs="+")
    parser.add_argument("-k", type=positive_int, default=5, help="documents to return, >= 1 (default 5)")
    parser.add_argument(
        "--hybrid",
        metavar="FUSION[:WEIGHT][+feedback:N][+document:W]",
        help="an index built with --hybrid: fuse this way instead of its default (rrf:W, weighted:W; +feedback:N, "
        "the fused top N fed back into the dense query, default 5, 0 off; +document:W, each passage raised by W times "
        "its document's best score, default 0.5, 0 off); none: dense",
    )
    add_output_options(parser)
    add_model_options(parser, runtime_only=True)


def run(args: argparse.Namespace) -> int:
    folder = Path(args.index)
    if not (folder / MANIFEST).is_file():
        what = "does not exist" if not folder.exists() else f"has no {MANIFEST}"
        raise UsageError(f"{folder} is not a kvembed-rag index ({what}); build one with 'kvembed-rag index'")
    hybrid = hybrid_flag(args.hybrid)
    quiet_libraries(verbose=bool(getattr(args, "verbose", False)))
    from ..errors import IndexCorruptError
    from ..retrieval.pipeline import load_for_search, search_documents

    try:
        index, embedder = load_for_search(folder, device=args.device, dtype=args.dtype, batch_tokens=args.batch_tokens)
    except (FileNotFoundError, IndexCorruptError) as exc:
        print(f"kvembed-rag search: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if hybrid not in (None, False) and index.lexical is None:
        print(f"kvembed-rag search: {folder} has no BM25; rebuild it with 'index --hybrid'", file=sys.stderr)
        return EXIT_FAILURE
    results = []
    for query in args.query:
        start = time.perf_counter()
        hits = search_documents(index, embedder.encode_queries(query), k=args.k, query_text=query, hybrid=hybrid)
        results.append((query, hits, time.perf_counter() - start))
    if args.json:
        print(
            json.dumps(
                [{"query": q, "seconds": round(t, 4), "hits": [h.__dict__ for h in hits]} for q, hits, t in results]
            )
        )
    else:
        for query, hits, seconds in results:
            print_hits(query, hits, seconds)
    return EXIT_OK
