"""``kvembed-rag info``: load a model and print what determines its vectors."""

from __future__ import annotations

import argparse
import json

from .options import EXIT_OK, add_model_options, add_output_options, load_embedder

NAME = "info"
HELP = "Load a model and print what determines its vectors."
EXAMPLES = """examples:
  kvembed-rag info
  kvembed-rag info --model ./my-llama --method prompteol --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_options(parser)
    add_model_options(parser)


def run(args: argparse.Namespace) -> int:
    embedder = load_embedder(args)
    from ..hardware import describe_hardware, hardware_line

    info = embedder.describe()
    hardware = describe_hardware(embedder.device)  # why dtype="auto" chose what it chose
    if args.json:
        print(json.dumps({**info, "hardware": hardware}, indent=1))
    else:
        for key, value in info.items():
            print(f"{key:24s} {value}")
        print(f"{'hardware':24s} {hardware_line(hardware)}")
    return EXIT_OK
