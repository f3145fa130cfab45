"""The speed targets issues 5 and 17 set, checked against a ``kvembed-rag bench --json`` file (reported, never
asserted; the package itself prints measurements only).

    kvembed-rag bench --dtypes float32,bfloat16 --json bench.json
    python benchmarks/bench_targets.py bench.json [--auto bfloat16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NamedTuple


class Row(NamedTuple):
    method: str
    dtype: str
    length: int
    tokens_per_s: float
    peak_mb: float


def check_dtype_targets(rows: list[Row], auto: str, baseline: str = "float32") -> list[dict[str, Any]]:
    """Issue 17's speed targets, reported (never asserted): kv in ``auto`` >= 1.8x kv in float32 at each length,
    kv >= 0.97x plain in each dtype, kv's peak memory in each dtype <= float32's at the longest length."""
    by = {(r.dtype, r.method, r.length): r for r in rows}
    lengths = sorted({r.length for r in rows})
    labels = list(dict.fromkeys(r.dtype for r in rows))
    checks: list[dict[str, Any]] = []
    for length in lengths:
        fast, base = by.get((auto, "kv", length)), by.get((baseline, "kv", length))
        if fast and base:
            value = fast.tokens_per_s / base.tokens_per_s
            target = f"kv {auto} >= 1.8x kv {baseline}"
            checks.append({"target": target, "length": length, "value": value, "ok": value >= 1.8})
        for label in labels:
            kv, plain = by.get((label, "kv", length)), by.get((label, "plain", length))
            if kv and plain:
                value = kv.tokens_per_s / plain.tokens_per_s
                target = f"kv >= 0.97x plain ({label})"
                checks.append({"target": target, "length": length, "value": value, "ok": value >= 0.97})
    if lengths:
        base = by.get((baseline, "kv", lengths[-1]))
        for label in labels:
            kv = by.get((label, "kv", lengths[-1]))
            if kv and base and label != baseline and base.peak_mb > 0:
                value = kv.peak_mb / base.peak_mb
                target = f"kv peak {label} <= {baseline}"
                checks.append({"target": target, "length": lengths[-1], "value": value, "ok": value <= 1.0})
    return checks


def check_targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's targets, reported (never asserted): kv >= 0.95x plain tokens/s at every length, echo <= 0.6x
    kv, kv peak memory <= 1.2x plain at the longest length."""
    by = {(r.method, r.length): r for r in rows}
    lengths = sorted({r.length for r in rows})
    checks: list[dict[str, Any]] = []
    for length in lengths:
        kv, plain, echo = by.get(("kv", length)), by.get(("plain", length)), by.get(("echo", length))
        if kv and plain:
            value = kv.tokens_per_s / plain.tokens_per_s
            checks.append(
                {"target": "kv >= 0.95x plain tokens/s", "length": length, "value": value, "ok": value >= 0.95}
            )
        if kv and echo:
            value = echo.tokens_per_s / kv.tokens_per_s
            checks.append({"target": "echo <= 0.6x kv tokens/s", "length": length, "value": value, "ok": value <= 0.6})
    longest = lengths[-1] if lengths else None
    kv, plain = by.get(("kv", longest or 0)), by.get(("plain", longest or 0))
    if kv and plain and plain.peak_mb > 0:
        value = kv.peak_mb / plain.peak_mb
        checks.append({"target": "kv peak <= 1.2x plain", "length": longest, "value": value, "ok": value <= 1.2})
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench_json", type=Path)
    parser.add_argument("--auto", help="the dtype 'auto' picks on the measured machine (default: the bench's)")
    args = parser.parse_args(argv)
    payload = json.loads(args.bench_json.read_text())
    rows = [Row(r["method"], r["dtype"], r["length"], r["tokens_per_s"], r["peak_mb"]) for r in payload["rows"]]
    labels = list(dict.fromkeys(r.dtype for r in rows))
    checks = check_targets([r for r in rows if r.dtype == labels[0]])
    if len(labels) > 1:
        auto = args.auto or payload["meta"].get("auto_dtype", labels[0])
        checks += check_dtype_targets(rows, auto if auto in labels else labels[0])
    for check in checks:
        verdict = "met" if check["ok"] else "MISSED"
        print(f"target {check['target']:34s} @{check['length']:<5d} {check['value']:6.3f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
