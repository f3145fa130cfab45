"""What every command shares: exit codes, the model options, argument validators and loading the embedder.

The model options live here and only here, one flag per ``KVEmbedConfig`` option (:func:`add_model_options`).
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

from ..config import DTYPES, PADDING_SIDES, POOLINGS
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


def passage_tokens(text: str) -> int:
    """Text tokens per passage: 0 (as many as ``--max-length`` holds) or at least 16."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or >= 16); got {text!r}") from None
    if value != 0 and value < 16:
        raise argparse.ArgumentTypeError(f"a passage needs at least 16 text tokens (0: fill --max-length); got {value}")
    return value


def hybrid_flag(text: str | None) -> Any:
    """``--hybrid`` of ``index`` and ``search``: None (flag not given), False (``none``: dense only), or the
    :class:`~kvembed_rag.retrieval.lexical.HybridConfig` it names (``default``: the shipped fusion)."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return False
    from ..errors import ConfigError
    from ..retrieval.lexical import HybridConfig

    try:
        return HybridConfig() if text.strip().lower() == "default" else HybridConfig.parse(text)
    except ConfigError as exc:
        raise UsageError(f"--hybrid: {exc}") from None


def bm25_flag(text: str | None) -> Any:
    """``--bm25`` of ``index``: None (not given) or the :class:`~kvembed_rag.retrieval.lexical.BM25Params` it names."""
    if text is None:
        return None
    from ..errors import ConfigError
    from ..retrieval.lexical import BM25Params

    try:
        return BM25Params.parse(text)
    except ConfigError as exc:
        raise UsageError(f"--bm25: {exc}") from None


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
#: how each KVEmbedConfig option becomes a flag: (argparse type, extra keywords). Every option but the progress
#: bar (-q) has one; tests/test_config.py fails when a new option is missing here.
FLAG_TYPES: dict[str, tuple[Any, dict[str, Any]]] = {
    "model": (str, {}),
    "revision": (str, {}),
    "method": (str, {"choices": list(METHODS)}),
    "layers": (str, {}),
    "bias": (float, {}),
    "pooling": (str, {"choices": list(POOLINGS)}),
    "prompts": (str, {"metavar": "JSON|TEMPLATE"}),
    "max_length": (positive_int, {}),
    "postprocess": (str, {"metavar": "KIND|FILE"}),
    "batch_tokens": (positive_int, {}),
    "padding_side": (str, {"choices": list(PADDING_SIDES)}),
    "device": (str, {}),
    "dtype": (str, {"choices": list(DTYPES)}),
    "attn_implementation": (str, {"choices": ["sdpa", "eager"]}),
    "trust_remote_code": (None, {"action": "store_true"}),
}
#: the options that only change how a search runs (search rebuilds everything else from the index)
RUNTIME_FLAGS = ("device", "dtype", "batch_tokens")


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    method: bool = True,
    max_length: bool = True,
    postprocess: bool = True,
    runtime_only: bool = False,
) -> None:
    """One flag per :class:`~kvembed_rag.config.KVEmbedConfig` option, with the config's help text.

    ``method``/``max_length``/``postprocess`` False: the command takes lists of them instead (eval, tune).
    ``runtime_only``: only ``--device --dtype --batch-tokens`` (search: the index records everything else).
    Unset flags keep the config's defaults (the flags default to None). The config module imports no torch.
    """
    from ..config import field_names, option_default, option_help

    group = parser.add_argument_group("embedder (the options of KVEmbedConfig)")
    listed = (("method", method), ("max_length", max_length), ("postprocess", postprocess))
    skip = {name for name, keep in listed if not keep}
    added = []
    for name in field_names():
        if name not in FLAG_TYPES or name in skip or (runtime_only and name not in RUNTIME_FLAGS):
            continue
        added.append(name)
        kind, extra = FLAG_TYPES[name]
        default = option_default(name)
        text = option_help(name)
        if default not in (None, False) and "default" not in text:
            text += f" (default: {default})"
        keywords: dict[str, Any] = {"help": text, **extra}
        if kind is not None:
            # --model shows its default (messages name it); the others stay None = "the config's default"
            keywords.update(type=kind, default=default if name == "model" else None)
        group.add_argument("--" + name.replace("_", "-"), dest=name, **keywords)
    # config_from_args reads these flags only: a command's own --max-length list (eval) is not an option value
    parser.set_defaults(_config_flags=tuple(added))


def _prompts(text: str) -> Any:
    if text.lstrip().startswith("{"):
        import json

        try:
            return json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--prompts is not valid JSON ({exc}); give a JSON object or one template") from exc
    return text


def config_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    """The :class:`~kvembed_rag.config.KVEmbedConfig` the flags ask for; invalid values are usage errors."""
    from ..config import KVEmbedConfig

    options: dict[str, Any] = {}
    for name in getattr(args, "_config_flags", tuple(FLAG_TYPES)):
        value = getattr(args, name, None)
        if value is not None and value is not False:
            options[name] = _prompts(value) if name == "prompts" else value
    options["show_progress"] = False  # commands draw their own progress per batch
    options.update(overrides)
    try:
        return KVEmbedConfig(**options)
    except ValueError as exc:  # ConfigError: the message names the option
        raise UsageError(str(exc)) from exc


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
    config_from_args(args)  # every option validated by the config, before anything loads


def load_embedder(args: argparse.Namespace, **overrides: Any) -> Any:
    """The embedder the model options describe (``overrides`` win), with the libraries' output configured."""
    validate_model_args(args)
    config = config_from_args(args, **overrides)
    quiet_libraries(verbose=bool(getattr(args, "verbose", False)))
    from ..embedder import KVEmbedder

    return KVEmbedder.from_pretrained(config)


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


def require_eval_extra() -> None:
    """Refuse (usage error, before any model loads) when the [eval] extra is not installed, naming it."""
    from ..eval.metrics import missing_eval_libraries

    missing = missing_eval_libraries()
    if missing:
        raise UsageError(
            f"evaluation needs {', '.join(missing)}, which the core package does not install: "
            "pip install 'kvembed-rag[eval]'"
        )
