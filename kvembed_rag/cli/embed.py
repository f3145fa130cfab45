"""``kvembed-rag embed``: embed texts from the command line, a file or stdin."""

from __future__ import annotations

import argparse
import json

from .options import (
    EXIT_OK,
    UsageError,
    add_model_options,
    add_output_options,
    load_embedder,
    validate_model_args,
    writable_file,
)
from .output import Progress, status

NAME = "embed"
HELP = "Embed texts from the command line, a file or stdin."
EXAMPLES = """examples:
  kvembed-rag embed --text "What is KV-Embedding?" --role query
  kvembed-rag embed --input docs.txt --out vectors.npy
  cat queries.jsonl | kvembed-rag embed --input - --role query --json
Input files must be UTF-8: a file with an invalid byte is refused, naming the file and the byte's offset."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", action="append", help="a text to embed (repeatable)")
    parser.add_argument("--input", help="file with one text per line, .jsonl with a 'text' field, or - for stdin")
    parser.add_argument("--out", help="write vectors to FILE.npy or FILE.jsonl")
    parser.add_argument("--role", choices=["document", "query"], default="document")
    add_output_options(parser)
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    from ..retrieval.documents import read_texts

    if args.text and args.input:
        raise UsageError("give --text or --input, not both")
    out = writable_file(args.out, "--out", (".npy", ".jsonl")) if args.out else None
    validate_model_args(args)
    try:
        texts = list(args.text) if args.text else read_texts(args.input)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if not texts:
        raise UsageError("nothing to embed: give --text or --input with one text per line")
    show = not args.quiet
    status(f"loading model {args.model} ...", enabled=show)
    embedder = load_embedder(args)
    total = sum(len(e.ids) for e in embedder.tokenize(texts, args.role))
    progress = Progress(f"embedding {len(texts):,} texts", total, enabled=show and len(texts) > 1)
    vectors = embedder.encode(
        texts, role=args.role, on_batch=lambda n, tokens: progress.update(tokens, f"{n:,}/{len(texts):,} texts")
    )
    progress.close()
    if out is not None:
        import numpy as np

        if out.suffix.lower() == ".npy":
            np.save(out, vectors)
        else:
            with out.open("w", encoding="utf-8") as handle:
                for text, vector in zip(texts, vectors, strict=True):
                    handle.write(json.dumps({"text": text, "vector": vector.tolist()}) + "\n")
        summary = {"out": str(out), "n": len(texts), "dim": embedder.dim, "embedder": embedder.describe()}
        print(json.dumps(summary) if args.json else f"wrote {len(texts)} x {embedder.dim} vectors to {out}")
    elif args.json:
        print(json.dumps({"embedder": embedder.describe(), "vectors": vectors.tolist()}))
    else:
        for text, vector in zip(texts, vectors, strict=True):
            head = " ".join(f"{x:+.4f}" for x in vector[:6])
            print(f"{text[:50]!r:54s} [{head} ...] dim={len(vector)}")
    return EXIT_OK
