"""``kvembed-rag index``: embed folders, text files or JSONL into a searchable FAISS index."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ..config import CHILD_TOKENS, PASSAGE_TOKENS
from .options import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_model_options,
    add_output_options,
    bm25_flag,
    creatable_folder,
    existing_path,
    hybrid_flag,
    load_embedder,
    passage_tokens,
    positive_int,
    validate_model_args,
)
from .output import BuildProgress, status

if TYPE_CHECKING:  # the retrieval package imports numpy: not at import time of the command line
    from ..retrieval.chunking import Chunking

NAME = "index"
HELP = "Embed folders, text files or JSONL into a searchable FAISS index."
EXAMPLES = """examples:
  kvembed-rag index docs/ --out my-index                      # .txt/.md/.rst files, recursively
  kvembed-rag index notes.jsonl --out my-index --text-field body --id-field key
  kvembed-rag index docs/ --out my-index --long-docs truncate --max-length 2048
  kvembed-rag index docs/ --out my-index --method echo --overwrite   # rebuild with another embedder
  kvembed-rag index corpus.jsonl --out my-index --engine ray --address auto --workers 8
  kvembed-rag index docs/ --out my-index --fit-postprocess center    # centre on this corpus' own mean
Re-running the same command resumes an interrupted build and skips unchanged documents. An index built with
--fit-postprocess keeps its statistics (in the index folder; 'search' applies them to queries): re-running with
the same --fit-postprocess appends new documents with them, without refitting; --overwrite refits.
Input files must be UTF-8: a file with an invalid byte is refused, naming the file and the byte's offset."""


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The input flags shared by ``index`` and ``postprocess fit``: paths, JSONL fields, long documents."""
    parser.add_argument("paths", nargs="+", help="folders, .txt/.md files or .jsonl files")
    parser.add_argument(
        "--long-docs",
        choices=["chunk", "truncate"],
        default=None,
        help="documents longer than a passage: overlapping titled passages (default, or what an existing index "
        "records) or one input cut at --max-length",
    )
    parser.add_argument(
        "--passage-tokens",
        type=passage_tokens,
        default=None,
        metavar="N",
        help=f"text tokens per passage of a long document (default: what an existing index records, else "
        f"{PASSAGE_TOKENS}, at most --max-length: the size that put most of the answer into a generator's budget on "
        "QMSum; 0: as many as --max-length holds)",
    )
    parser.add_argument(
        "--child-tokens",
        type=passage_tokens,
        default=None,
        metavar="N",
        help=f"embed each passage as its pieces of N text tokens (e.g. {CHILD_TOKENS}) and score it by its best piece; "
        "BM25 and the results keep the whole passage (small-to-big; default: what an existing index records, else 0 = "
        "one vector per passage: on fresh QMSum meetings pieces lifted dense kv but not the fused ranking)",
    )
    parser.add_argument("--text-field", default="text", help="JSONL field with the text (default: text)")
    parser.add_argument("--id-field", default="id", help="JSONL field with the id (default: id)")
    parser.add_argument("--title-field", default="title", help="JSONL field with the title (default: title)")


def read_documents(args: argparse.Namespace) -> list[Any]:
    """The documents ``args.paths`` hold (see :func:`add_input_arguments`); problems are usage errors."""
    from ..retrieval.documents import read_sources

    for path in args.paths:
        existing_path(path)
    try:
        documents = read_sources(
            args.paths, text_field=args.text_field, id_field=args.id_field, title_field=args.title_field
        )
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if not documents:
        raise UsageError(f"no documents found in {', '.join(args.paths)} (.txt, .md, .rst files or .jsonl)")
    return documents


def fit_spec(text: str, flag: str) -> str:
    """A post-processing kind to fit (``center``, ``remove-top:K``, ``whiten[:S]``, ``@DIM``), checked by the
    config's own rule; ``auto``, ``none`` and file paths are refused (nothing to fit)."""
    from ..config import KVEmbedConfig, is_stats_path

    if is_stats_path(text.strip()) or text.strip().lower() in ("auto", "none"):
        raise UsageError(f"{flag} needs a kind to fit, e.g. center, remove-top:2 or whiten:0.3@128; got {text!r}")
    try:
        return KVEmbedConfig(postprocess=text).postprocess
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--out", required=True, help="index directory (created, or updated in place)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild --out from scratch when it holds an index made by another embedder (default: refuse)",
    )
    parser.add_argument(
        "--fit-postprocess",
        metavar="KIND",
        help="fit this post-processing (center, remove-top:K, whiten[:S], @DIM) on the raw document vectors of the "
        "chunks being indexed, store it in --out and apply it to documents and (in 'search') queries; replaces "
        "--postprocess. The chunks fitted on are embedded once: their raw vectors are post-processed, not re-embedded",
    )
    parser.add_argument(
        "--fit-limit",
        type=positive_int,
        help="with --fit-postprocess: fit on a seeded random sample of N chunks (default: all of them)",
    )
    parser.add_argument(
        "--hybrid",
        nargs="?",
        const="default",
        metavar="FUSION[:WEIGHT][+feedback:N][+document:W]",
        help="keep BM25 over the chunks' texts beside the vectors and fuse the two in 'search' (rrf:W or weighted:W, "
        "W = BM25's share; +feedback:N: the fused top N move the dense query, default 5, 0 off; +document:W: a "
        "passage rises by W times its document's best score, default 0.5, 0 off; default for a new index: the "
        "shipped fusion, weighted:0.5+feedback:5+document:0.5; 'none': dense only). An existing index keeps what it "
        "has unless given; "
        "given, a dense index gets BM25 over its stored texts",
    )
    parser.add_argument(
        "--bm25",
        metavar="k1=K,b=B",
        help="BM25's parameters for the hybrid's lexical side (k1, b, method=lucene|bm25l|bm25+|...; default for a new "
        "index k1=2,b=0.5, chosen on 2,048-token passages; an existing index keeps its own unless given)",
    )
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


def resolve_chunking(args: argparse.Namespace, out: Any = None) -> Chunking:
    """The :class:`~kvembed_rag.retrieval.chunking.Chunking` to index with; fills ``args.long_docs``,
    ``args.passage_tokens`` and ``args.child_tokens`` left out: from the cut the index at
    ``out`` records when appending to it (a re-run after an upgrade keeps adding passages of the index's size and
    pieces; an index recorded before pieces existed has none), else the defaults (``chunk``,
    :data:`PASSAGE_TOKENS`, no pieces)."""
    recorded: dict[str, Any] = {}
    if out is not None and not getattr(args, "overwrite", False):
        from ..retrieval.pipeline import stored_chunking

        recorded = stored_chunking(out) or {}
    if args.long_docs is None and args.passage_tokens is not None:
        args.long_docs = "chunk"  # a passage size asks for passages, whatever the index holds (it then refuses)
    elif args.long_docs is None:
        args.long_docs = recorded.get("long_docs") if recorded.get("long_docs") in ("chunk", "truncate") else "chunk"
    if args.passage_tokens is None:
        stored = recorded.get("passage_tokens") if recorded.get("long_docs") == "chunk" else None
        args.passage_tokens = int(stored) if isinstance(stored, int) else PASSAGE_TOKENS
    if getattr(args, "child_tokens", None) is None:
        children = recorded.get("child_tokens", 0) if recorded.get("long_docs") == "chunk" else 0
        args.child_tokens = int(children) if isinstance(children, int) else 0
    if args.long_docs == "truncate":
        args.child_tokens = 0  # one input per document: nothing to cut into pieces
    from ..retrieval.chunking import Chunking

    return Chunking(long_docs=args.long_docs, passage_tokens=args.passage_tokens, child_tokens=args.child_tokens)


def _mismatch(out: Any, exc: Exception) -> int:
    from ..retrieval.pipeline import corpus_postprocess

    fitted = corpus_postprocess(out)
    hint = (
        f"This index's post-processing was fitted on its corpus ({fitted}): to append, re-run with "
        f"--fit-postprocess {fitted} (its statistics are reused, not refitted); to rebuild, add --overwrite."
        if fitted
        else "To rebuild it with this embedder, re-run the command with --overwrite (every document is "
        "re-embedded), or choose another --out."
    )
    print(f"kvembed-rag index: error: {out}: {exc}.\n{hint}", file=sys.stderr)
    return EXIT_FAILURE


def run(args: argparse.Namespace) -> int:
    for path in args.paths:  # usage errors first, before any file is read
        existing_path(path)
    out = creatable_folder(args.out, "--out")
    validate_model_args(args)
    spec = None
    if args.fit_postprocess is not None:
        spec = fit_spec(args.fit_postprocess, "--fit-postprocess")
        if args.postprocess is not None:
            raise UsageError("--fit-postprocess fits the post-processing on the corpus; drop --postprocess")
    elif args.fit_limit is not None:
        raise UsageError("--fit-limit applies to --fit-postprocess only")
    from ..retrieval.vector_index import MANIFEST

    if args.hybrid is None and (args.overwrite or not (out / MANIFEST).is_file()):
        args.hybrid = "default"  # a new index: dense kv + BM25, the shipped retrieval path
    # None (flag not given, existing index): the index keeps what it has
    hybrid = hybrid_flag(args.hybrid)
    bm25 = bm25_flag(args.bm25)
    if bm25 is not None and hybrid is False:
        raise UsageError("--bm25 sets the hybrid's BM25: drop --hybrid none")
    documents = read_documents(args)
    show = not args.quiet and not args.json
    chunking = resolve_chunking(args, out)
    status(f"read {len(documents):,} documents; loading model {args.model} ...", enabled=show)
    from ..errors import ChunkingMismatchError, ConfigError, EmbedderMismatchError

    raw_vectors: dict[str, Any] = {}  # chunk text -> raw vector the corpus fit computed (not embedded twice)
    if spec is None:
        embedder = load_embedder(args)
    else:
        from ..retrieval.pipeline import fit_index_postprocess

        # raw vectors to fit on: no calibration statistics are fitted (or read) for nothing
        embedder = load_embedder(args, postprocess="none")
        status(f"fitting post-processing {spec} on the corpus (or reusing the index's) ...", enabled=show)
        try:
            embedder = fit_index_postprocess(
                embedder,
                documents,
                out,
                spec,
                chunking=chunking,
                overwrite=args.overwrite,
                limit=args.fit_limit,
                raw_vectors=raw_vectors,
            )
        except EmbedderMismatchError as exc:
            return _mismatch(out, exc)
        except ChunkingMismatchError as exc:
            print(f"kvembed-rag index: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
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
    from ..retrieval.pipeline import build_index

    progress = BuildProgress("indexing", len(documents), enabled=show)
    try:
        report = build_index(
            embedder,
            documents,
            out,
            chunking=chunking,
            progress=progress,
            encode=encode,
            group_tokens=group_tokens,
            overwrite=args.overwrite,
            raw_vectors=raw_vectors,
            hybrid=hybrid,
            bm25=bm25,
        )
    except EmbedderMismatchError as exc:
        return _mismatch(out, exc)
    except (ChunkingMismatchError, ConfigError) as exc:
        progress.close()
        print(f"kvembed-rag index: error: {exc}", file=sys.stderr)
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
