"""``kvembed-rag index``: embed folders, text files or JSONL into a searchable FAISS index."""

from __future__ import annotations

import argparse
import json
import sys

from .options import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_model_options,
    add_output_options,
    creatable_folder,
    existing_path,
    load_embedder,
    positive_int,
    validate_model_args,
)
from .output import BuildProgress, status

NAME = "index"
HELP = "Embed folders, text files or JSONL into a searchable FAISS index."
EXAMPLES = """examples:
  kvembed-rag index docs/ --out my-index                      # .txt/.md/.rst files, recursively
  kvembed-rag index notes.jsonl --out my-index --text-field body --id-field key
  kvembed-rag index docs/ --out my-index --long-docs truncate --max-length 2048
  kvembed-rag index docs/ --out my-index --method echo --overwrite   # rebuild with another embedder
  kvembed-rag index corpus.jsonl --out my-index --engine ray --address auto --workers 8
Re-running the same command resumes an interrupted build and skips unchanged documents.
Input files must be UTF-8: a file with an invalid byte is refused, naming the file and the byte's offset."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="folders, .txt/.md files or .jsonl files")
    parser.add_argument("--out", required=True, help="index directory (created, or updated in place)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild --out from scratch when it holds an index made by another embedder (default: refuse)",
    )
    parser.add_argument(
        "--long-docs",
        choices=["chunk", "truncate"],
        default="chunk",
        help="documents over --max-length: overlapping titled chunks (default) or cut",
    )
    parser.add_argument("--text-field", default="text", help="JSONL field with the text (default: text)")
    parser.add_argument("--id-field", default="id", help="JSONL field with the id (default: id)")
    parser.add_argument("--title-field", default="title", help="JSONL field with the title (default: title)")
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="embed in this process (default) or on a Ray cluster (pip install 'kvembed-rag[ray]')",
    )
    parser.add_argument("--address", default=None, help="Ray cluster: 'auto' or 'ray://head:10001' (default: local)")
    parser.add_argument("--workers", type=positive_int, default=2, help="Ray actors, one model each (default 2)")
    add_output_options(parser)
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from ..retrieval.documents import read_sources

    for path in args.paths:
        existing_path(path)
    out = creatable_folder(args.out, "--out")
    validate_model_args(args)
    try:
        documents = read_sources(
            args.paths, text_field=args.text_field, id_field=args.id_field, title_field=args.title_field
        )
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if not documents:
        raise UsageError(f"no documents found in {', '.join(args.paths)} (.txt, .md, .rst files or .jsonl)")
    show = not args.quiet and not args.json
    status(f"read {len(documents):,} documents; loading model {args.model} ...", enabled=show)
    embedder = load_embedder(args)
    encode, group_tokens = None, 32_768
    if args.engine == "ray":
        import tempfile

        from ..retrieval.distributed import ray_encoder

        encode = ray_encoder(
            embedder.config.portable(),
            tempfile.mkdtemp(prefix="kvembed-ray-"),
            workers=args.workers,
            address=args.address,
        )
        group_tokens = 1_000_000  # one cluster job per million tokens: checkpoints without per-job overhead
    from ..errors import EmbedderMismatchError
    from ..retrieval.pipeline import build_index

    progress = BuildProgress("indexing", len(documents), enabled=show)
    try:
        report = build_index(
            embedder,
            documents,
            out,
            long_docs=args.long_docs,
            progress=progress,
            encode=encode,
            group_tokens=group_tokens,
            overwrite=args.overwrite,
        )
    except EmbedderMismatchError as exc:
        print(
            f"kvembed-rag index: error: {out}: {exc}.\n"
            "To rebuild it with this embedder, re-run the command with --overwrite (every document is "
            "re-embedded), or choose another --out.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted: finished documents are saved in {out}; run the same command to resume", file=sys.stderr)
        return EXIT_FAILURE
    progress.close()
    summary = {"out": str(out), **report.to_dict(), "embedder": embedder.describe()}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"indexed {report.embedded} documents ({report.chunks} chunks, {report.tokens:,} tokens) in "
            f"{report.seconds:.1f} s; {report.skipped} unchanged skipped, {report.replaced} replaced -> {out}"
        )
    return EXIT_OK
