"""What every command shares: exit codes, the model options, argument validators and loading the embedder.

The model options live here and only here (the integrator generates them from ``KVEmbedConfig`` later).
Nothing in this module imports torch or transformers at import time: ``--help``, ``--version`` and usage
errors must answer at once, so heavy modules are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..methods import METHODS

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or input files: exit code 2, reported before any model is loaded where possible."""


# ------------------------------------------------------------------ argparse types (fail in parse_args: exit 2)
def positive_int(text: str) -> int:
    """An integer >= 1 (``-k``, ``--max-length``, ``--batch-tokens``, ``--limit`` ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1; got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive); got {value}")
    return value


def int_list(text: str | None, flag: str) -> list[int] | None:
    """``"512,1024"`` -> ``[512, 1024]``; every value >= 1."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"{flag} must be comma-separated integers; got {text!r}") from exc
    if not values or min(values) < 1:
        raise UsageError(f"{flag} needs positive integers; got {text!r}")
    return values


def method_list(text: str) -> list[str]:
    methods = [m.strip().lower().replace("_", "-") for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return methods


def parse_layers(text: str | None) -> list[int] | str | None:
    if text is None or text in ("auto", "id", "default"):
        return text
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"--layers must be comma-separated integers, 'auto', 'id' or 'default'; got {text!r}") from exc
    if not layers or min(layers) < 0:
        raise UsageError(f"--layers needs layer indices >= 0; got {text!r}")
    return layers


def check_sample(args: argparse.Namespace) -> None:
    if args.sample and args.limit is None:
        raise UsageError("--sample picks --limit N pairs or queries at random; give --limit too")


def parse_windows(text: str | None) -> list[list[int]] | None:
    if text is None:
        return None
    try:
        windows = [[int(i) for i in part.split(",") if i.strip()] for part in text.split(";") if part.strip()]
    except ValueError as exc:
        raise UsageError(f"--windows takes layer lists separated by ';', e.g. '4,5;8,9'; got {text!r}") from exc
    if not windows or not all(windows):
        raise UsageError(f"--windows needs at least one non-empty window; got {text!r}")
    return windows


# ------------------------------------------------------------------ path checks (before the model loads)
def existing_path(path: str, what: str = "file or folder") -> Path:
    target = Path(path)
    if not target.exists():
        raise UsageError(f"{path}: no such {what}")
    return target


def writable_file(path: str, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """An output file whose folder exists and is writable (and whose suffix is one of ``suffixes``)."""
    target = Path(path)
    if suffixes and target.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} must end in {' or '.join(suffixes)}; got {path}")
    if target.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder {folder} is not writable")
    return target


def creatable_folder(path: str, flag: str) -> Path:
    """An output folder that exists and is writable, or can be created (its nearest existing parent is)."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder")
    ancestor = target
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot create it ({ancestor} is not a writable folder)")
    return target


def check_model_spec(spec: str) -> None:
    """A --model that names a local path must exist, and be a folder or a .gguf file (no load needed)."""
    from ..model_specs import check_local_spec

    try:
        check_local_spec(spec)
    except Exception as exc:  # ModelLoadError: a missing path or an unsupported file
        raise UsageError(str(exc)) from exc


# ------------------------------------------------------------------ the shared model options
def add_model_options(
    parser: argparse.ArgumentParser, *, method: bool = True, max_length: bool = True, runtime_only: bool = False
) -> None:
    """``--model --method --max-length --layers --bias --device --dtype --batch-tokens``.

    ``method``/``max_length`` False: the command takes lists of them instead (eval, tune). ``runtime_only``:
    just ``--device``/``--dtype`` (search: the index records everything else).
    """
    group = parser.add_argument_group("model")
    if not runtime_only:
        group.add_argument(
            "--model",
            default="default",
            help="'default' (Gemma-3-270M, offline), 'smollm2', a hub id, a directory or a .gguf file",
        )
        if method:
            group.add_argument("--method", default="kv", choices=list(METHODS), help="embedding method (default: kv)")
        if max_length:
            group.add_argument(
                "--max-length", type=positive_int, default=None, help="tokens per input (default: 4096 or the model's)"
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
        choices=["float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "auto"],
        help="default: float32 on CPU, bfloat16 on CUDA",
    )
    if not runtime_only:
        group.add_argument("--batch-tokens", type=positive_int, default=None, help="padded tokens per forward pass")


def add_output_options(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """``--json`` (where the output is data) and ``-q``; ``-v``/``--verbose`` is accepted here and globally."""
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only results and errors (no progress)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="show the libraries' logs and bars"
    )


def validate_model_args(args: argparse.Namespace) -> None:
    """Everything about the model options that can be checked without loading it."""
    if getattr(args, "model", None) is not None:
        check_model_spec(args.model)
    if hasattr(args, "layers"):
        parse_layers(args.layers)


def load_embedder(args: argparse.Namespace, **overrides: Any) -> Any:
    """The embedder the model options describe (``overrides`` win), with the libraries' output configured."""
    validate_model_args(args)
    quiet_libraries(verbose=bool(getattr(args, "verbose", False)))
    from ..embedder import DEFAULT_BATCH_TOKENS, KVEmbedder

    options: dict[str, Any] = dict(
        method=getattr(args, "method", "kv"),
        layers=parse_layers(getattr(args, "layers", None)),
        bias=getattr(args, "bias", None),
        max_length=getattr(args, "max_length", None),
        batch_tokens=getattr(args, "batch_tokens", None) or DEFAULT_BATCH_TOKENS,
        device=args.device,
        dtype=args.dtype,
    )
    options.update(overrides)
    return KVEmbedder.from_pretrained(args.model, **options)


# ------------------------------------------------------------------ output policy
_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TQDM_DISABLE": "1",  # gguf dequantisation and accelerate use tqdm directly; read when tqdm is imported
}


@contextmanager
def output_scope(*, verbose: bool, quiet: bool) -> Iterator[None]:
    """For one command: our logs at INFO with -v, WARNING by default, ERROR with -q (warnings hidden too);
    the libraries' bars and logs only with -v. Logging and warning filters are restored afterwards, so
    calling :func:`main` in-process (tests, notebooks) leaves the caller's configuration as it was.

    Entered before any heavy import, so the environment switches reach libraries that read them at import.
    """
    if not verbose:
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
    logger = logging.getLogger("kvembed_rag")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.setLevel(logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING)
    saved_level = logger.level
    if verbose:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")  # -q: results and errors only
            quiet_libraries(verbose=verbose, only_if_imported=True)
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


def quiet_libraries(*, verbose: bool, only_if_imported: bool = False) -> None:
    """Silence (or, with -v, enable) transformers' and huggingface_hub's logs and progress bars."""
    if only_if_imported and "transformers" not in sys.modules:
        return
    try:
        import huggingface_hub.utils as hub_utils
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - dependencies of this package
        return
    if verbose:
        hf_logging.set_verbosity_info()
        hf_logging.enable_progress_bar()
        hub_utils.enable_progress_bars()
    else:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()
    for name in ("accelerate", "gguf", "safetensors"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
