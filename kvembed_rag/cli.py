"""Command line: ``kvembed-rag COMMAND ...`` (also ``python -m kvembed_rag``). Commands only parse, call, print.

Exit codes: 0 success, 1 a failure while working (a model that will not load, a corrupt file), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import KVEmbedError
from .methods import METHODS, first_candidate_layer

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or input files: exit code 2."""


def _model_options(parser: argparse.ArgumentParser, *, eval_mode: bool = False) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default="default", help="'default' (Gemma-3-270M, offline), a hub id, a directory or a .gguf file"
    )
    if not eval_mode:  # eval and tune take --methods and a list of --max-length values instead
        group.add_argument("--method", default="kv", choices=list(METHODS), help="embedding method (default: kv)")
        group.add_argument(
            "--max-length", type=int, default=None, help="tokens per input (default: 4096 or the model's limit)"
        )
    group.add_argument(
        "--layers", default=None, help="re-routed layers, e.g. '3,4'; 'auto' (tuned, else ID), 'id' or 'default'"
    )
    group.add_argument(
        "--bias", type=float, default=None, help="logit bias on the re-routed slot (default: tuned, else 1.0)"
    )
    group.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    group.add_argument(
        "--dtype",
        default=None,
        help="auto, float32, bfloat16, float16 (default auto: bf16 on CUDA and on CPUs where native bf16 is faster)",
    )
    group.add_argument(
        "--weights", default=None, choices=["float", "int8"], help="int8: dynamic int8 Linear layers (CPU only)"
    )
    group.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per forward pass")


def _parse_layers(text: str | None) -> list[int] | str | None:
    if text is None or text in ("auto", "id", "default"):
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"--layers must be comma-separated integers, 'auto' or 'default'; got {text!r}") from exc


def load_embedder(args: argparse.Namespace, **overrides: Any) -> Any:
    from .embedder import DEFAULT_BATCH_TOKENS, KVEmbedder

    options: dict[str, Any] = dict(
        method=getattr(args, "method", "kv"),
        layers=_parse_layers(args.layers),
        bias=args.bias,
        max_length=getattr(args, "max_length", None),
        batch_tokens=args.batch_tokens or DEFAULT_BATCH_TOKENS,
        device=args.device,
        dtype=args.dtype,
        weights=getattr(args, "weights", None),
        show_progress=not getattr(args, "quiet", False),
    )
    options.update(overrides)
    return KVEmbedder.from_pretrained(args.model, **options)


def _read_texts(path: str | None) -> list[str]:
    """One text per line from a file or stdin; ``.jsonl`` reads the ``text`` field of each object."""
    if path in (None, "-"):
        lines = sys.stdin.read().splitlines()
        source = "<stdin>"
    else:
        file = Path(path)
        if not file.is_file():
            raise UsageError(f"{file}: no such file")
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UsageError(f"{file}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
        source = str(file)
    if source.endswith(".jsonl"):
        from .corpus import read_jsonl

        try:
            return [document.text for document in read_jsonl(source)]
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    return [line for line in lines if line.strip()]


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    texts = list(args.text) if args.text else _read_texts(args.input)
    if not texts:
        raise UsageError("nothing to embed: give --text or --input with one text per line")
    embedder = load_embedder(args)
    vectors = embedder.encode(texts, role=args.role)
    if args.out:
        out = Path(args.out)
        if out.suffix == ".npy":
            np.save(out, vectors)
        elif out.suffix == ".jsonl":
            with out.open("w", encoding="utf-8") as handle:
                for text, vector in zip(texts, vectors, strict=True):
                    handle.write(json.dumps({"text": text, "vector": vector.tolist()}) + "\n")
        else:
            raise UsageError(f"--out must end in .npy or .jsonl; got {out}")
        summary = {"out": str(out), "n": len(texts), "dim": embedder.dim, "embedder": embedder.describe()}
        print(json.dumps(summary) if args.json else f"wrote {len(texts)} x {embedder.dim} vectors to {out}")
    elif args.json:
        print(json.dumps({"embedder": embedder.describe(), "vectors": vectors.tolist()}))
    else:
        for text, vector in zip(texts, vectors, strict=True):
            head = " ".join(f"{x:+.4f}" for x in vector[:6])
            print(f"{text[:50]!r:54s} [{head} ...] dim={len(vector)}")
    return EXIT_OK


def cmd_select_layers(args: argparse.Namespace) -> int:
    from .layer_selection import load_calibration, plot_curve, select_layers

    if args.calibration and not Path(args.calibration).is_file():
        raise UsageError(f"{args.calibration}: no such calibration file")
    texts = load_calibration(args.calibration)
    embedder = load_embedder(args, method="kv", layers="default")
    selection = select_layers(embedder, texts, normalize=not args.raw, use_cache=not args.no_cache)
    if args.plot:
        plot_curve(selection, args.plot, title=f"{embedder.source.spec}: TwoNN ID of last-token states")
    if args.json:
        print(json.dumps({**selection.to_dict(), "model": embedder.describe()["model"], "plot": args.plot}))
        return EXIT_OK
    print(
        f"model {embedder.source.spec} ({embedder.num_layers} layers), {selection.n_texts} calibration texts, "
        f"{'L2-normalised' if selection.normalized else 'raw'} states{' (cached)' if selection.cached else ''}"
    )
    skip = first_candidate_layer(embedder.num_layers)
    finite = [v for v in selection.curve if v == v]
    top = max(finite) if finite else 1.0
    for layer, value in enumerate(selection.curve):
        mark = "*" if layer in selection.layers else ("-" if layer < skip else " ")
        bar = "#" * int(40 * value / top) if value == value else "(n/a)"
        print(f"{mark} layer {layer:3d}  ID {value:7.2f}  {bar}")
    print(f"re-routed layers: {selection.layers}  (* chosen, - skipped: first 20%)")
    if args.plot:
        print(f"plot: {args.plot}")
    return EXIT_OK


def _progress_bar(enabled: bool, total: int) -> tuple[Any, Callable[[int, int, int], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="doc", desc="indexing", disable=not enabled)
    started = time.perf_counter()

    def update(done: int, tokens: int, tokens_total: int) -> None:
        bar.n = done
        elapsed = max(time.perf_counter() - started, 1e-9)
        bar.set_postfix_str(f"~{tokens / elapsed:,.0f} tok/s", refresh=False)
        bar.refresh()

    return bar, update


def cmd_index(args: argparse.Namespace) -> int:
    from .corpus import read_sources
    from .indexing import build_index

    try:
        documents = read_sources(
            args.paths, text_field=args.text_field, id_field=args.id_field, title_field=args.title_field
        )
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if not documents:
        raise UsageError(f"no documents found in {', '.join(args.paths)} (.txt, .md, .rst files or .jsonl)")
    embedder = load_embedder(args, show_progress=False)
    encode, group_tokens = None, 32_768
    if args.engine == "ray":
        import tempfile

        from .distributed import ray_encoder
        from .indexing import embedder_options

        options = embedder_options(embedder)
        model = options.pop("model")
        encode = ray_encoder(
            model, options, tempfile.mkdtemp(prefix="kvembed-ray-"), workers=args.workers, address=args.address
        )
        group_tokens = 1_000_000  # one cluster job per million tokens: checkpoints without per-job overhead
    bar, update = _progress_bar(not args.quiet and not args.json, len(documents))
    try:
        report = build_index(
            embedder,
            documents,
            args.out,
            long_docs=args.long_docs,
            progress=update,
            encode=encode,
            group_tokens=group_tokens,
        )
    except KeyboardInterrupt:
        bar.close()
        print(
            f"interrupted: finished documents are saved in {args.out}; run the same command to resume", file=sys.stderr
        )
        return EXIT_FAILURE
    bar.n = len(documents)
    bar.close()
    summary = {"out": str(args.out), **report.to_dict(), "embedder": embedder.describe()}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"indexed {report.embedded} documents ({report.chunks} chunks, {report.tokens:,} tokens) in "
            f"{report.seconds:.1f} s; {report.skipped} unchanged skipped, {report.replaced} replaced -> {args.out}"
        )
    return EXIT_OK


def _print_hits(query: str, hits: list[Any], seconds: float) -> None:
    print(f"\nQ: {query}   ({seconds * 1000:.0f} ms)")
    for rank, hit in enumerate(hits, start=1):
        print(f"  {rank}. {hit.score:.3f}  {hit.document}  [{hit.title[:60]}]")
        print(f"     {hit.snippet[:160]}")


def cmd_search(args: argparse.Namespace) -> int:
    from .index import IndexCorruptError
    from .indexing import load_for_search, search_documents

    try:
        index, embedder = load_for_search(args.index, device=args.device, dtype=args.dtype)
    except (FileNotFoundError, IndexCorruptError) as exc:
        print(f"kvembed-rag search: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    results = []
    for query in args.query:
        start = time.perf_counter()
        hits = search_documents(index, embedder.encode_queries(query), k=args.k)
        results.append((query, hits, time.perf_counter() - start))
    if args.json:
        print(
            json.dumps(
                [{"query": q, "seconds": round(t, 4), "hits": [h.__dict__ for h in hits]} for q, hits, t in results]
            )
        )
    else:
        for query, hits, seconds in results:
            _print_hits(query, hits, seconds)
    return EXIT_OK


DEMO_QUESTIONS = (
    "How do I parse a JSON string into Python objects?",
    "Which module computes the median and standard deviation of a list of numbers?",
    "How can I run a shell command and capture its output?",
    "How do I compress a folder into a zip archive?",
    "How do I generate a random unique identifier?",
    "Which module parses command-line options and prints help?",
)


def cmd_demo(args: argparse.Namespace) -> int:
    from .corpus import DEMO_MODULES, stdlib_documents
    from .indexing import build_index, search_documents
    from .models import cache_root

    out = Path(args.out) if args.out else cache_root() / "demo-index" / args.method
    print("kvembed-rag demo: KV-Embedding over Python's own module documentation (pydoc), offline.")
    start = time.perf_counter()
    # 2,048 tokens keeps the demo within a few minutes on 2 CPU cores; pages beyond it are chunked
    embedder = load_embedder(args, show_progress=False, max_length=args.max_length or 2048)
    loaded = time.perf_counter() - start
    documents = stdlib_documents(DEMO_MODULES[: args.limit] if args.limit else DEMO_MODULES)
    print(
        f"model: {embedder.source.spec} ({embedder.describe()['architecture']}, {embedder.num_layers} layers), "
        f"method {embedder.method}, layers {embedder.layers}, loaded in {loaded:.1f} s"
    )
    print(f"corpus: {len(documents)} module pages, whole up to {embedder.max_length} tokens, chunked beyond")
    bar, update = _progress_bar(not args.quiet, len(documents))
    report = build_index(embedder, documents, out, progress=update)
    bar.n = len(documents)
    bar.close()
    print(
        f"index: {report.embedded} embedded, {report.skipped} reused from {out} "
        f"({report.tokens:,} tokens in {report.seconds:.1f} s)"
    )
    from .index import VectorIndex

    index = VectorIndex.load(out)
    for question in args.question or DEMO_QUESTIONS:
        t = time.perf_counter()
        hits = search_documents(index, embedder.encode_queries(question), k=args.k)
        _print_hits(question, hits, time.perf_counter() - t)
    print(
        f"\ntotal {time.perf_counter() - start:.1f} s. Next: kvembed-rag index YOUR_FOLDER --out my-index; "
        'kvembed-rag search my-index "your question"'
    )
    return EXIT_OK


def _bench_group(args: argparse.Namespace, dtype: str | None, lengths: list[int], methods: list[str]) -> Any:
    """The base embedder of one dtype label (``int8`` means float32 activations around int8 Linear layers)."""
    import torch

    from .bench import PAPER_SHAPES, placeholder_tokenizer, random_model
    from .embedder import KVEmbedder
    from .models import pick_device, pick_dtype
    from .weight_quantization import quantize_linear_layers

    weights = "int8" if dtype == "int8" else getattr(args, "weights", None)
    dtype = "float32" if dtype == "int8" else dtype
    max_length = max(lengths) * 2 + 8
    if args.shape:
        if args.shape not in PAPER_SHAPES:
            raise UsageError(f"--shape must be one of {', '.join(PAPER_SHAPES)}")
        device = pick_device(args.device)
        torch_dtype = torch.float32 if weights == "int8" else pick_dtype(dtype, device)
        model = random_model(args.shape, device=device, dtype=torch_dtype)
        if weights == "int8":
            quantize_linear_layers(model)
        return KVEmbedder(model, placeholder_tokenizer(), layers="default", max_length=max_length)
    return load_embedder(args, layers="default", max_length=max_length, dtype=dtype, weights=weights)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import (
        check_dtype_targets,
        check_targets,
        measure_peaks,
        plot_dtype_rows,
        plot_rows,
        run_dtype_benchmark,
    )
    from .embedder import KVEmbedder
    from .hardware import auto_dtype, describe_hardware, hardware_line

    lengths = _int_list(args.lengths, "--lengths") or []
    methods = _method_list(",".join(m for m in args.methods.split(",") if m.strip() != "plain"))
    requested = [d.strip() for d in (args.dtypes or args.dtype or "auto").split(",") if d.strip()]
    groups: dict[str, dict[str, Any]] = {}
    bases: dict[str, Any] = {}
    for dtype in requested:
        base = _bench_group(args, dtype, lengths, methods)
        label = "int8" if base.describe().get("weights") else str(base.dtype).removeprefix("torch.")
        if label in groups:
            raise UsageError(f"--dtypes names {label} twice (auto resolves to {label} here); list each dtype once")
        bases[label] = base
        groups[label] = {
            m: KVEmbedder(
                base.model, base.tokenizer, method=m, layers=base.layers, source=base.source, max_length=base.max_length
            )
            for m in methods
        }
    first = next(iter(bases.values()))
    device = first.device
    auto = str(auto_dtype(device)[0]).removeprefix("torch.")
    label = f"{args.shape} (random weights)" if args.shape else str(args.model)
    batch_tokens = args.batch_tokens or 16_384
    peaks = measure_peaks(list(groups), device)
    rows = run_dtype_benchmark(groups, lengths, batch_tokens=batch_tokens, repeats=args.repeats, peaks=peaks)
    after = measure_peaks(list(groups), device)  # the best of before and after: load changes during a run
    for row in rows:
        peaks[row.dtype] = max(peaks[row.dtype], after[row.dtype])
    for row in rows:
        if row.gflops is not None:
            row.peak_fraction = row.gflops / peaks[row.dtype]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    hardware = describe_hardware(device)
    meta = {
        "model": label,
        "device": device_name,
        "dtype": ",".join(groups),
        "threads": torch.get_num_threads(),
        "batch_tokens": batch_tokens,
        "kv_layers": first.layers,
        "auto_dtype": auto,
        "hardware": hardware,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "peak_shape": "2048x640 @ 640x2048",
        "flops_formula": "2*linear_weights + sum_layers 4*heads*head_dim*mean_visible_keys per processed token",
    }
    targets = check_targets([r for r in rows if r.dtype == next(iter(groups))])
    if len(groups) > 1:
        targets += check_dtype_targets(rows, auto if auto in groups else next(iter(groups)))
    if args.json:
        payload = {"meta": meta, "rows": [r.to_dict() for r in rows], "targets": targets}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.plot:
        title = f"{label} on {device_name}, {meta['dtype']}"
        (plot_dtype_rows if len(groups) > 1 else plot_rows)(rows, args.plot, title)
    print(
        f"{label} on {device_name} ({meta['dtype']}), {batch_tokens} padded tokens per batch, kv layers {first.layers}"
    )
    print(f"hardware: {hardware_line(hardware)}")
    print("matmul peak (2048x640 @ 640x2048): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(
        f"{'method':18s} {'dtype':>8s} {'length':>6s} {'batch':>5s} {'tokens/s':>10s} {'x plain':>8s} "
        f"{'GFLOP/s':>8s} {'of peak':>7s} {'peak MB':>9s}"
    )
    for r in rows:
        print(
            f"{r.method:18s} {r.dtype:>8s} {r.length:6d} {r.batch:5d} {r.tokens_per_s:10.0f} "
            f"{r.ratio_to_plain or 0:8.3f} {r.gflops or 0:8.1f} {r.peak_fraction or 0:7.1%} {r.peak_mb:9.1f}"
        )
    for check in targets:
        verdict = "met" if check["ok"] else "MISSED"
        print(f"target {check['target']:34s} @{check['length']:<5d} {check['value']:6.3f}  {verdict}")
    if len(groups) > 1:
        print(
            "targets not measured here: STS-B and SciFact within 0.003 of float32 "
            "(python benchmarks/dtype_quality.py); speed ratios are from one interleaved run"
        )
    return EXIT_OK


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"{flag} must be comma-separated integers; got {text!r}") from exc
    if not values or min(values) < 1:
        raise UsageError(f"{flag} needs positive integers; got {text!r}")
    return values


def _method_list(text: str) -> list[str]:
    methods = [m.strip().lower().replace("_", "-") for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return methods


def _check_sample(args: argparse.Namespace) -> None:
    if args.sample and args.limit is None:
        raise UsageError("--sample picks --limit N pairs or queries at random; give --limit too")


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.cache import EmbeddingCache
    from .eval.harness import EvalOptions, format_table, plot_length_sweep, run_evaluation

    methods = _method_list(args.methods)
    lengths = _int_list(args.max_length, "--max-length")
    _check_sample(args)
    for path in args.paths:
        if not Path(path).exists():
            raise UsageError(f"{path}: no such file or folder")
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
    base = load_embedder(args, method="kv", max_length=max(lengths) if lengths else None)
    cache = EmbeddingCache(None if args.no_cache else (args.cache_dir or "default"))

    def show(row: Any) -> None:
        if not args.quiet:
            print(
                f"  {row.dataset} {row.method} @{row.max_length}: {row.metric} {row.score:.4f} "
                f"({row.tokens} tokens, {row.seconds:.0f} s{', cached' if row.cached else ''})",
                file=sys.stderr,
            )

    rows = run_evaluation(
        base, args.task, args.paths, methods=methods, lengths=lengths, options=options, cache=cache, on_row=show
    )
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in rows], indent=1) + "\n")
    if args.plot:
        plot_length_sweep(rows, args.plot)
    print(format_table(rows))
    return EXIT_OK


def _windows(text: str | None) -> list[list[int]] | None:
    if text is None:
        return None
    try:
        windows = [[int(i) for i in part.split(",") if i.strip()] for part in text.split(";") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"--windows takes layer lists separated by ';', e.g. '4,5;8,9'; got {text!r}") from exc
    if not windows or not all(windows):
        raise UsageError(f"--windows needs at least one non-empty window; got {text!r}")
    return windows


def cmd_tune(args: argparse.Namespace) -> int:
    from .eval.cache import EmbeddingCache
    from .eval.harness import EvalOptions
    from .tuning import candidate_windows, format_grid, tune, tuned_path

    try:
        biases = [float(b) for b in args.biases.split(",") if b.strip()]
    except ValueError as exc:
        raise UsageError(f"--biases must be comma-separated numbers; got {args.biases!r}") from exc
    windows = _windows(args.windows)
    poolings = [x.strip() for x in args.poolings.split(",") if x.strip()]
    if not poolings or set(poolings) - {"hybrid", "last", "mean"}:
        raise UsageError(f"--poolings takes hybrid, last and/or mean; got {args.poolings!r}")
    if not Path(args.path).exists():
        raise UsageError(f"{args.path}: no such file or folder")
    base = load_embedder(args, method="kv", layers=_parse_layers(args.layers) or "id")
    if args.reset:
        target = tuned_path(base)
        target.unlink(missing_ok=True)
        print(f"removed {target}; layers='auto' uses the intrinsic-dimension window again")
        return EXIT_OK
    if windows is None:
        try:
            windows = candidate_windows(base.num_layers, args.width or len(base.layers), args.stride)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    _check_sample(args)
    options = EvalOptions(
        limit=args.limit, sample=args.sample, corpus_limit=args.corpus_limit, split=args.split, seed=args.seed
    )
    cache = EmbeddingCache(None if args.no_cache else "default")
    total = (len(windows) + (list(base.layers) not in windows)) * len(biases) * len(poolings) + 1

    def show(point: Any) -> None:
        if not args.quiet:
            print(f"  layers {point.layers} bias {point.bias:g} {point.pooling}: {point.score:.4f}", file=sys.stderr)

    if not args.quiet:
        print(f"tuning {total} configurations on {args.path} ...", file=sys.stderr)
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
        on_point=show,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    print(format_grid(result))
    if result.saved_to:
        print(f"saved as this model's default (layers='auto', no --bias): {result.saved_to}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .hardware import describe_hardware, hardware_line

    embedder = load_embedder(args)
    info = embedder.describe()
    hardware = describe_hardware(embedder.device)
    if args.json:
        print(json.dumps({**info, "hardware": hardware}, indent=1))
    else:
        for key, value in info.items():
            print(f"{key:24s} {value}")
        print(f"{'hardware':24s} {hardware_line(hardware)}")
    return EXIT_OK


EXAMPLES = {
    "embed": """examples:
  kvembed-rag embed --text "What is KV-Embedding?" --role query
  kvembed-rag embed --input docs.txt --out vectors.npy
  cat queries.jsonl | kvembed-rag embed --input - --role query --json""",
    "index": """examples:
  kvembed-rag index docs/ --out my-index                      # .txt/.md/.rst files, recursively
  kvembed-rag index notes.jsonl --out my-index --text-field body --id-field key
  kvembed-rag index docs/ --out my-index --long-docs truncate --max-length 2048
  kvembed-rag index corpus.jsonl --out my-index --engine ray --address auto --workers 8
Re-running the same command resumes an interrupted build and skips unchanged documents.""",
    "search": """examples:
  kvembed-rag search my-index "how do I rotate log files?"
  kvembed-rag search my-index "query one" "query two" -k 3 --json""",
    "demo": """examples:
  kvembed-rag demo
  kvembed-rag demo --question "How do I read a CSV file?" -k 5""",
    "select-layers": """examples:
  kvembed-rag select-layers
  kvembed-rag select-layers --model ./SmolLM2-135M-Instruct.Q4_1.gguf --plot id.png
  kvembed-rag select-layers --calibration my_corpus.txt --json""",
    "bench": """examples:
  kvembed-rag bench                                   # default model, CPU: plain vs every method
  kvembed-rag bench --lengths 512,4096 --methods kv,echo --json bench.json --plot bench.png
  kvembed-rag bench --shape qwen3-4b --device cuda    # a paper backbone's shape, random weights, bf16""",
    "eval": """tasks and formats:
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
Vectors are cached per configuration (in the kvembed-rag cache), so adding a method recomputes only that one.""",
    "tune": """examples:
  kvembed-rag tune sts ../shared/data/stsb/dev.tsv --limit 300 --sample   # a random 300, all genres
  kvembed-rag tune retrieval my-beir-dev --windows "4,5;8,9;14,15" --biases 0,1,2,4 --json grid.json
  kvembed-rag tune sts dev.tsv --reset          # forget the tuned choice for this model
The winner is saved as the model's default: embedders built with layers='auto' and no bias use it.""",
    "info": """examples:
  kvembed-rag info
  kvembed-rag info --model ./my-llama --method prompteol --json""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvembed-rag",
        description="Training-free text embeddings from frozen decoder-only LLMs (KV-Embedding), for RAG.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=handler)
        return p

    p = command("embed", cmd_embed, "Embed texts from the command line, a file or stdin.")
    p.add_argument("--text", action="append", help="a text to embed (repeatable)")
    p.add_argument("--input", help="file with one text per line, .jsonl with a 'text' field, or - for stdin")
    p.add_argument("--out", help="write vectors to FILE.npy or FILE.jsonl")
    p.add_argument("--role", choices=["document", "query"], default="document")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _model_options(p)

    p = command("index", cmd_index, "Embed folders, text files or JSONL into a searchable FAISS index.")
    p.add_argument("paths", nargs="+", help="folders, .txt/.md files or .jsonl files")
    p.add_argument("--out", required=True, help="index directory (created, or updated in place)")
    p.add_argument(
        "--long-docs",
        choices=["chunk", "truncate"],
        default="chunk",
        help="documents over --max-length: overlapping titled chunks (default) or cut",
    )
    p.add_argument("--text-field", default="text", help="JSONL field with the text (default: text)")
    p.add_argument("--id-field", default="id", help="JSONL field with the id (default: id)")
    p.add_argument("--title-field", default="title", help="JSONL field with the title (default: title)")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="embed in this process (default) or on a Ray cluster (pip install 'kvembed-rag[ray]')",
    )
    p.add_argument("--address", default=None, help="Ray cluster: 'auto' or 'ray://head:10001' (default: local)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors, one model each (default 2)")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    _model_options(p)

    p = command("search", cmd_search, "Search an index: ranked documents with scores, ids and snippets.")
    p.add_argument("index", help="index directory written by 'index'")
    p.add_argument("query", nargs="+")
    p.add_argument("-k", type=int, default=5, help="documents to return (default 5)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)

    p = command("demo", cmd_demo, "Index Python's module docs with the default model and answer questions.")
    p.add_argument("--out", help="index directory (default: in the kvembed-rag cache; reused next time)")
    p.add_argument("--question", action="append", help="ask your own question (repeatable)")
    p.add_argument("--limit", type=int, help="index only the first N of the 19 module pages")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("-q", "--quiet", action="store_true")
    _model_options(p)

    p = command("select-layers", cmd_select_layers, "Estimate each layer's intrinsic dimension and pick the window.")
    p.add_argument("--calibration", help="one text per line (or .jsonl with 'text'); default: the shipped set")
    p.add_argument("--plot", help="draw the ID curve to this PNG")
    p.add_argument("--raw", action="store_true", help="use raw hidden states instead of L2-normalised ones")
    p.add_argument("--no-cache", action="store_true", help="recompute and do not write the cache")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    _model_options(p)

    p = command("bench", cmd_bench, "Throughput and peak memory of each method against the bare forward pass.")
    p.add_argument("--lengths", default="128,512,2048,4096", help="tokens per text (default 128,512,2048,4096)")
    p.add_argument("--methods", default="kv,prompteol,mean,echo,bidirectional,token-prepending")
    p.add_argument(
        "--shape",
        help=f"random weights of a paper backbone's shape: {', '.join(['qwen3-4b', 'mistral-7b', 'llama-3.1-8b'])}",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--dtypes",
        help="several dtypes in one interleaved run, e.g. float32,bfloat16,int8 (int8: int8 Linear weights)",
    )
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--plot", help="draw tokens/s and memory against length to this PNG")
    _model_options(p)

    p = command("eval", cmd_eval, "Evaluate methods side by side on STS, retrieval, classification, clustering, LoCo.")
    p.add_argument("task", choices=["sts", "retrieval", "classification", "clustering", "loco"])
    p.add_argument("paths", nargs="+", help="dataset file(s) or folder(s) in the task's format")
    p.add_argument("--methods", default="kv,prompteol,mean", help=f"comma-separated: {','.join(METHODS)}")
    p.add_argument("--max-length", default=None, help="tokens per input, or a list such as 512,1024,2048,4096")
    p.add_argument("--limit", type=int, help="first N pairs / judged queries; a seeded sample of N texts (cls/clu)")
    p.add_argument(
        "--sample", action="store_true", help="with --limit: a seeded random N pairs / queries, not the first N"
    )
    p.add_argument("--corpus-limit", type=int, help="retrieval: judged documents plus a seeded sample, N in all")
    p.add_argument("--documents", type=int, help="loco: a seeded sample of N documents and the queries they answer")
    p.add_argument("--split", default="dev", help="qrels split for retrieval and loco (default dev)")
    p.add_argument("--long-docs", choices=["chunk", "truncate"], default="chunk", help="loco: over-long documents")
    p.add_argument("--test-fraction", type=float, default=0.25, help="classification: held-out share of a lone file")
    p.add_argument(
        "--standardize",
        action="store_true",
        help="classification: z-score the vectors (training statistics) before the regression; MTEB does not",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write one row per task x dataset x method x length to this file")
    p.add_argument("--plot", help="draw score against --max-length to this PNG")
    p.add_argument("--cache-dir", help="embedding cache (default: <kvembed-rag cache>/eval)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached vectors")
    p.add_argument("-q", "--quiet", action="store_true")
    _model_options(p, eval_mode=True)

    p = command("tune", cmd_tune, "Grid-search the re-routing window and bias on a dev set; save the winner.")
    p.add_argument("task", choices=["sts", "retrieval"])
    p.add_argument("path", help="an STS TSV or a BEIR folder (see 'kvembed-rag eval --help')")
    p.add_argument("--windows", help="windows to try, e.g. '4,5;8,9' (default: sliding windows from 20%% depth)")
    p.add_argument("--width", type=int, help="layers per default window (default: the ID window's width)")
    p.add_argument("--stride", type=int, help="layers between default windows (default: about 8 windows)")
    p.add_argument("--biases", default="0,1,2", help="biases to try (default 0,1,2)")
    p.add_argument("--poolings", default="hybrid", help="poolings to try, e.g. hybrid,last (default hybrid)")
    p.add_argument(
        "--limit",
        type=int,
        help="first N pairs or judged queries, in file order: a dev file sorted by genre (STS-B is) gives a "
        "biased tuning set, so add --sample (or shuffle the file)",
    )
    p.add_argument(
        "--sample", action="store_true", help="with --limit: a seeded random N pairs / queries, not the first N"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sample and --corpus-limit (default 0)")
    p.add_argument("--corpus-limit", type=int, help="retrieval: judged documents plus a seeded sample, N in all")
    p.add_argument("--split", default="dev")
    p.add_argument("--json", help="write the grid and the winner to this file")
    p.add_argument("--no-save", action="store_true", help="print the grid without changing the model's default")
    p.add_argument("--reset", action="store_true", help="delete this model's tuned default and exit")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached vectors")
    p.add_argument("-q", "--quiet", action="store_true")
    _model_options(p, eval_mode=True)

    p = command("info", cmd_info, "Load a model and print what determines its vectors.")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    _model_options(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"kvembed-rag {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KVEmbedError, ValueError, TypeError, OSError) as exc:
        print(f"kvembed-rag {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
