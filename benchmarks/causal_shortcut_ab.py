"""Before/after, in one process: an unpadded input inside its window on the causal kernel with no mask (issue 31).

    python benchmarks/causal_shortcut_ab.py [--lengths 512,1024] [--dtypes bfloat16,float32] [--repeats 15]
        [--threads 1]

``ReroutingPlan.causal_without_mask`` lets a layer whose mask is plain causal (no padding, no window shorter than the
input: Gemma's sliding layers at 512 tokens) run the causal kernel without building the mask. Here it is switched
off ("old") and on ("new") for ``kv`` and ``layers=[]``, beside the stock forward, each round in a shuffled order.
1,024 tokens is the control: past the 512-token window the shortcut never applies, so old/new there is the noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reroute_price import before_after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from kvembed_rag import attention

    torch.set_num_threads(args.threads)
    shortcut = attention.ReroutingPlan.causal_without_mask

    def install(on: bool) -> None:
        attention.ReroutingPlan.causal_without_mask = shortcut if on else (lambda self, *a: False)  # type: ignore[method-assign]

    lengths = [int(x) for x in args.lengths.split(",")]
    for row in before_after(install, args.dtypes.split(","), lengths, args.repeats):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
