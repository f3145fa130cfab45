"""Rank candidates by mean rank on sample A over families measured in separate ``postprocess_study.py`` runs.

    python benchmarks/rank_families.py docs/results/postprocess_gemma_kv_settings_larger.json \
        docs/results/postprocess_gemma_qmsum512_kv_last.json:qmsum=qmsum512 \
        docs/results/postprocess_gemma_qmsum4096_kv_last.json:qmsum=qmsum4096 --settings kv,kv-last,kv-last-b2

Each argument is a ``--json`` file of ``postprocess_study.py``, optionally followed by ``:OLD=NEW`` family
renames (QMSum at 512 and at 4,096 tokens are both called ``qmsum`` in their own files). A candidate is a
(setting, post-processing) pair; only candidates scored on sample A of every family are ranked. The rank is the
study's rule (1 + the number of candidates strictly better on that family's A), averaged over the families;
sample B is printed beside it and chose nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from postprocess_study import mean_ranks

Table = dict[tuple[str, str], dict[tuple[str, str], float]]


def parse_source(text: str) -> tuple[Path, dict[str, str]]:
    """``FILE`` or ``FILE:OLD=NEW[,OLD=NEW]`` -> the file and its family renames."""
    path, _, renames = text.partition(":")
    mapping: dict[str, str] = {}
    for pair in filter(None, renames.split(",")):
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise SystemExit(f"a rename is OLD=NEW (e.g. qmsum=qmsum4096); got {pair!r} in {text!r}")
        mapping[old] = new
    return Path(path), mapping


def load_rows(sources: list[tuple[Path, dict[str, str]]]) -> list[dict[str, Any]]:
    """Every row of every file, families renamed; a (setting, post, family, sample) seen twice keeps the last."""
    merged: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for path, mapping in sources:
        payload = json.loads(path.read_text())
        for row in payload["rows"] if isinstance(payload, dict) else payload:
            row = {**row, "family": mapping.get(row["family"], row["family"])}
            merged[(row["setting"], row["post"], row["family"], row["sample"])] = row
    return list(merged.values())


def ranked(
    rows: list[dict[str, Any]], settings: list[str] | None = None, without: tuple[str, ...] = ()
) -> tuple[list[str], Table, dict]:
    """The families, the score table and the mean rank on A of every candidate that has all of them
    (``without``: post-processing variants left out of the ranking)."""
    table: Table = {}
    for r in rows:
        if (settings is None or r["setting"] in settings) and r["post"] not in without:
            table.setdefault((r["setting"], r["post"]), {})[(r["family"], r["sample"])] = r["score"]
    families = sorted({f for scores in table.values() for f, _ in scores})
    full = [c for c in table if all((f, "A") in table[c] for f in families)]
    return families, table, mean_ranks(table, full, families)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="FILE or FILE:OLD=NEW (family renames)")
    parser.add_argument("--settings", help="comma-separated settings to rank (default: every one)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--without", action="append", default=[], help="leave this post-processing variant out")
    parser.add_argument("--show", action="append", default=[], help="also print SETTING:POST wherever it ranks")
    args = parser.parse_args(argv)
    settings = args.settings.split(",") if args.settings else None
    families, table, ranks = ranked(load_rows([parse_source(s) for s in args.sources]), settings, tuple(args.without))
    if not ranks:
        print("no candidate has sample A of every family", file=sys.stderr)
        return 1
    order = sorted(ranks, key=lambda c: ranks[c])
    shown = {tuple(s.split(":", 1)) for s in args.show}
    print(f"{len(order)} candidates with every family ({', '.join(families)}), by mean rank on A")
    print("| rank | setting | post | mean rank A | " + " | ".join(f"{f} A / B" for f in families) + " | mean of B |")
    print("|---" * (len(families) + 5) + "|")
    for place, c in enumerate(order, 1):
        if place > args.top and c not in shown:
            continue
        b = [table[c].get((f, "B")) for f in families]
        b_mean = sum(b) / len(b) if all(v is not None for v in b) else float("nan")  # type: ignore[arg-type]
        cells = " | ".join(f"{table[c][(f, 'A')]:.4f} / {table[c].get((f, 'B'), float('nan')):.4f}" for f in families)
        print(f"| {place} | {c[0]} | {c[1]} | {ranks[c]:.2f} | {cells} | {b_mean:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
