"""Before/after, in one process: the banded CPU path without its "rows that see a key" pass on unpadded input.

    python benchmarks/banded_unpadded_ab.py [--lengths 1024,2048,4096] [--dtypes bfloat16,float32] [--repeats 15]
        [--threads 1]

A layer that is not re-routed runs, on a long CPU input with a sliding window, the banded kernel; an all-masked row
(a padding query) comes back NaN there and is zeroed with ``allowed.any(-1)`` and ``torch.where``. An unpadded
input has no such row, so since 2026-12-07 the pass is skipped when the plan saw no padding. Here the old
behaviour ("old": the plan told it is padded, which at these lengths changes nothing else: past the 512-token
window the causal shortcut never applies) and the new one run for ``kv`` and ``layers=[]``, beside the stock
forward, each round in a shuffled order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from reroute_price import before_after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    import torch

    from kvembed_rag import attention

    torch.set_num_threads(args.threads)
    new = attention._banded_stock

    def as_padded(*a: Any) -> Any:  # the old path: the reduction and the copy run whatever the input
        query, key, value, mask, plan, scale, window = a
        return new(query, key, value, mask, dataclasses.replace(plan, padded=True), scale, window)

    def install(on: bool) -> None:
        attention._banded_stock = new if on else as_padded  # type: ignore[assignment]

    rows = []
    for row in before_after(install, args.dtypes.split(","), [int(x) for x in args.lengths.split(",")], args.repeats):
        rows.append({**row, "threads": args.threads})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
