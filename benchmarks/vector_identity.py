"""Snapshot the vectors a build produces, and compare two snapshots (refactors must not move vectors).

    python benchmarks/vector_identity.py save before.npz            # on the old commit
    python benchmarks/vector_identity.py save after.npz             # on the new one
    python benchmarks/vector_identity.py compare before.npz after.npz [--tolerance 1e-6] [--ignore config.weights]

``save`` embeds a fixed set of texts with every method x both roles x ``postprocess`` in ("none", "auto") on
the real default model in float32 (``--model`` for another), and records ``describe()`` of the tiny random
checkpoints the tests build (``--tiny`` adds them; needs the tests folder). ``compare`` prints max |delta| per
entry and exits 1 when any exceeds the tolerance or an entry is missing on one side.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = [
    "The cat sat on the mat.",
    "A man is playing a guitar on the street while people walk past.",
    "Retrieval-augmented generation hands passages, not whole documents, to its generator.",
    "What did the committee decide about the budget for the remote control project?",
    " ".join(["Meeting transcripts are long and wander from topic to topic."] * 40),
    "",
]


def _write(out: Path, entries: dict[str, np.ndarray], described: dict[str, Any]) -> None:
    np.savez(out, **{key.replace("/", "|"): value for key, value in entries.items()})
    out.with_suffix(".json").write_text(json.dumps(described, indent=1, sort_keys=True, default=str))


def _save(out: Path, model: str, tiny: bool, tests: Path) -> None:
    from kvembed_rag import METHODS, KVEmbedder

    entries: dict[str, np.ndarray] = {}
    described: dict[str, Any] = {}
    base = KVEmbedder.from_pretrained(model, dtype="float32", postprocess="none")
    for method in METHODS:
        for postprocess in ("none", "auto"):
            embedder = base.variant(method=method, postprocess=postprocess)
            for role in ("document", "query"):
                entries[f"{method}/{postprocess}/{role}"] = embedder.encode(TEXTS, role=role)
            described[f"{model}/{method}/{postprocess}"] = embedder.describe()
    _write(out, entries, described)  # the real model's part is kept even if the tiny part fails
    if tiny:
        sys.path.insert(0, str(Path(tests).resolve()))
        from tiny_models import ARCHITECTURES, build_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            for arch in ARCHITECTURES:
                path = build_checkpoint(arch, Path(tmp) / arch)
                for method in METHODS:
                    embedder = KVEmbedder.from_pretrained(str(path), method=method, dtype="float32", layers=[1, 2])
                    description = embedder.describe()
                    description.pop("model", None)  # holds the temporary path
                    description.get("config", {}).pop("model", None)
                    described[f"tiny-{arch}/{method}"] = description
                    entries[f"tiny-{arch}/{method}/document"] = embedder.encode(TEXTS[:4])
    _write(out, entries, described)
    print(f"saved {len(entries)} arrays to {out} and {len(described)} descriptions to {out.with_suffix('.json')}")


def _compare(before: Path, after: Path, tolerance: float, ignore: list[str]) -> int:
    old, new = np.load(before), np.load(after)
    failed = 0
    for key in sorted(set(old.files) | set(new.files)):
        if key not in old.files or key not in new.files:
            print(f"{key.replace('|', '/'):45s} missing on one side")
            failed += 1
            continue
        delta = float(np.max(np.abs(old[key] - new[key]))) if old[key].shape == new[key].shape else float("inf")
        flag = "" if delta <= tolerance else "  <-- moved"
        failed += bool(flag)
        print(f"{key.replace('|', '/'):45s} max|delta| {delta:.2e}{flag}")
    old_json, new_json = before.with_suffix(".json"), after.with_suffix(".json")
    if old_json.exists() and new_json.exists():
        a, b = json.loads(old_json.read_text()), json.loads(new_json.read_text())
        for key in sorted(set(a) | set(b)):
            for record in (a.get(key), b.get(key)):
                for name in ignore:  # e.g. an option a release removed: config.weights
                    (record or {}).get("config", {}).pop(name.removeprefix("config."), None)
            if a.get(key) != b.get(key):
                print(f"describe() differs: {key}\n  before {a.get(key)}\n  after  {b.get(key)}")
                failed += 1
    print(f"{failed} entries differ beyond {tolerance:g}" if failed else f"all entries within {tolerance:g}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save")
    save.add_argument("out", type=Path)
    save.add_argument("--model", default="default")
    save.add_argument("--tiny", action="store_true", help="also describe() the tiny random checkpoints")
    save.add_argument(
        "--tests",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "tests",
        help="the tests folder holding tiny_models.py (default: this checkout's)",
    )
    compare = commands.add_parser("compare")
    compare.add_argument("before", type=Path)
    compare.add_argument("after", type=Path)
    compare.add_argument("--tolerance", type=float, default=1e-6)
    compare.add_argument(
        "--ignore", action="append", default=[], help="a config option to leave out, e.g. config.weights"
    )
    args = parser.parse_args(argv)
    if args.command == "save":
        _save(args.out, args.model, args.tiny, args.tests)
        return 0
    return _compare(args.before, args.after, args.tolerance, args.ignore)


if __name__ == "__main__":
    raise SystemExit(main())
