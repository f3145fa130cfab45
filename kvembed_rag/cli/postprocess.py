"""``kvembed-rag postprocess``: fit post-processing statistics on your own texts, or show a statistics file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .index import add_input_arguments, fit_spec, read_documents, resolve_chunking
from .options import (
    EXIT_OK,
    UsageError,
    add_model_options,
    add_output_options,
    existing_path,
    load_embedder,
    positive_int,
    validate_model_args,
    writable_file,
)
from .output import status

NAME = "postprocess"
HELP = "Fit post-processing statistics (isotropy calibration) on your own texts, or show a statistics file."
EXAMPLES = """examples:
  kvembed-rag postprocess fit docs/ notes.jsonl --spec center --out my-stats.safetensors
  kvembed-rag postprocess fit docs/ --spec whiten:0.3@128 --out my-stats.safetensors --method kv --max-length 512
  kvembed-rag postprocess show my-stats.safetensors --json
  kvembed-rag index docs/ --out my-index --postprocess my-stats.safetensors      # use the file
The statistics are fitted on the raw document vectors of the texts (long documents chunked as 'index' chunks
them) and keyed by the embedder's configuration (model, method, layers, bias, pooling, prompts): postprocess=FILE
(--postprocess FILE, KVEmbedder.from_pretrained(..., postprocess="my-stats.safetensors")) refuses a file fitted
for another configuration. 'kvembed-rag index --fit-postprocess KIND' fits them on the corpus it indexes instead."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fit = actions.add_parser(
        "fit",
        help="fit statistics on folders, .txt/.md or .jsonl files and write them to --out",
        description="Fit post-processing statistics on your texts (as documents) and write a .safetensors file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_arguments(fit)
    fit.add_argument(
        "--spec", required=True, metavar="KIND", help="what to fit: center, remove-top:K, whiten[:S], with @DIM"
    )
    fit.add_argument("--out", required=True, help="the statistics file to write (.safetensors)")
    fit.add_argument("--limit", type=positive_int, help="fit on a seeded random sample of N texts (default: all)")
    fit.add_argument("--seed", type=int, default=0, help="seed of --limit (default 0)")
    add_output_options(fit)
    add_model_options(fit)
    show = actions.add_parser(
        "show",
        help="print a statistics file's header: spec, n, the configuration it is keyed by, fingerprint",
        description="Print a post-processing statistics file's header (nothing is loaded but the file).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("file", help="a .safetensors file written by 'postprocess fit' or save_postprocess")
    add_output_options(show)


def run(args: argparse.Namespace) -> int:
    return _fit(args) if args.action == "fit" else _show(args)


def _header(path: Path) -> dict[str, Any]:
    from ..postprocess import read_header

    header = read_header(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:  # the widths, without reading the arrays
        shapes = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    in_dim = shapes["mean"][0] if "mean" in shapes else None
    out_dim = shapes["projection"][1] if "projection" in shapes else in_dim
    return {"file": str(path), **header, "in_dim": in_dim, "out_dim": out_dim}


def _fit(args: argparse.Namespace) -> int:
    spec = fit_spec(args.spec, "--spec")
    out = writable_file(args.out, "--out", (".safetensors",))
    if args.postprocess is not None:
        raise UsageError("postprocess fit fits --spec on your texts; drop --postprocess")
    validate_model_args(args)
    documents = read_documents(args)
    chunking = resolve_chunking(args)
    show = not args.quiet and not args.json
    status(f"read {len(documents):,} documents; loading model {args.model} ...", enabled=show)
    embedder = load_embedder(args, postprocess="none")  # raw vectors: nothing fitted on calibration texts
    from ..retrieval.pipeline import index_texts, sample_texts

    texts = [text for document in documents for text in index_texts(embedder, document, chunking)]
    texts = sample_texts(texts, args.limit, seed=args.seed)
    status(f"fitting {spec} on {len(texts):,} texts ...", enabled=show)
    fitted = embedder.fit_postprocess(texts, spec)
    fitted.save_postprocess(out)
    header = _header(out)
    if args.json:
        print(json.dumps(header))
    else:
        print(
            f"fitted {spec} on {header['n']:,} texts ({header['in_dim']} -> {header['out_dim']} dims), "
            f"fingerprint {header['fingerprint']} -> {out}\n"
            f"use it with --postprocess {out} (or postprocess={str(out)!r}) and the same model options"
        )
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    from ..postprocess import PostprocessSpec, spec_text

    path = existing_path(args.file, "file")
    header = _header(path)  # not a statistics file: PostprocessMismatchError, reported by main (exit 1)
    if args.json:
        print(json.dumps(header))
        return EXIT_OK
    print(f"{path}")
    print(f"  spec         {spec_text(PostprocessSpec.from_dict(header['spec']))}")
    print(f"  fitted on    {header['n']:,} vectors ({header['in_dim']} -> {header['out_dim']} dims)")
    if header["shrinkage"] is not None:
        print(f"  shrinkage    {header['shrinkage']:.4g}")
    print(f"  fingerprint  {header['fingerprint']}")
    print("  fitted for (the embedder configuration it is keyed by):")
    for name, value in sorted(header["key"].items()):
        print(f"    {name:<24} {json.dumps(value)}")
    return EXIT_OK
