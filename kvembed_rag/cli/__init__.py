"""Command line: ``kvembed-rag COMMAND ...`` (also ``python -m kvembed_rag``). Commands only parse, call, print.

Exit codes: 0 success, 1 a failure while working (a model that will not load, a corrupt file), 2 bad usage
(reported before any model loads). One module per command in :data:`COMMANDS`; each has ``NAME``, ``HELP``,
``EXAMPLES``, ``add_arguments(parser)`` and ``run(args) -> int``. Importing this package, ``--help``,
``--version`` and usage errors never import torch or transformers: commands import them inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from .options import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError, output_scope

#: the commands, in --help order: modules (relative to this package, or absolute) with NAME, HELP, EXAMPLES,
#: add_arguments(parser) and run(args). Add a command by adding its module here.
COMMANDS: list[str] = [
    ".demo",
    ".index",
    ".search",
    ".embed",
    ".postprocess",
    ".select_layers",
    ".bench",
    ".eval",
    ".tune",
    ".serve",
    ".info",
]

__all__ = ["COMMANDS", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]


def _command_modules() -> list[ModuleType]:
    # every command imports without its optional extras (they are imported inside run): a failing import is a bug
    return [importlib.import_module(name, __name__) for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvembed-rag",
        description="Training-free text embeddings from frozen decoder-only LLMs (KV-Embedding), for RAG.",
        epilog="Exit codes: 0 success, 1 failure while working, 2 bad usage. 'kvembed-rag COMMAND --help' for more.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log details and show the libraries' own logs and progress bars"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        name = getattr(module, "NAME", None) or module.__name__.rsplit(".", 1)[-1].replace("_", "-")
        summary = getattr(module, "HELP", None) or (module.__doc__ or name).strip().splitlines()[0]
        command = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=getattr(module, "EXAMPLES", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage and 0 on --help / --version
        return int(exc.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    from ..errors import KVEmbedError

    try:
        with output_scope(verbose=bool(args.verbose), quiet=bool(getattr(args, "quiet", False))):
            return int(args.handler(args))
    except UsageError as exc:
        print(f"kvembed-rag {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"kvembed-rag {args.command}: interrupted", file=sys.stderr)
        return 130
    except (KVEmbedError, ValueError, TypeError, OSError) as exc:
        print(f"kvembed-rag {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
