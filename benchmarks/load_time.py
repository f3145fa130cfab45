"""First (dequantise + cache) versus second (cached) load of a GGUF model, each in a fresh process.

    python benchmarks/load_time.py [--model default] [--json]

The first load runs against an empty temporary cache; the second reuses it. Target: second <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, sys, time
start = time.perf_counter()
from kvembed_rag import KVEmbedder
imported = time.perf_counter()
embedder = KVEmbedder.from_pretrained(sys.argv[1], layers="default")
loaded = time.perf_counter()
embedder.encode("warm-up")
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported}))
"""


def timed_load(model: str, cache: str) -> dict[str, float]:
    env = {**os.environ, "KVEMBED_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", CHILD, model], env=env, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        first = timed_load(args.model, cache)
        second = timed_load(args.model, cache)
    result = {
        "model": args.model,
        "first_load_s": round(first["load_s"], 2),
        "second_load_s": round(second["load_s"], 2),
        "speedup": round(first["load_s"] / second["load_s"], 1),
        "import_s": round(second["import_s"], 2),
        "target_second_load_s": 5.0,
        "meets_target": second["load_s"] <= 5.0,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.model}: first load {result['first_load_s']} s (dequantise + cache), "
            f"second load {result['second_load_s']} s (cached), {result['speedup']}x; "
            f"target <= 5 s: {'met' if result['meets_target'] else 'MISSED'} (imports: {result['import_s']} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
