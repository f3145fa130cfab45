"""Markdown tables from the JSON rows that ``kvembed-rag eval --json`` and ``bench --json`` wrote.

    python benchmarks/results_tables.py docs/results/stsb_gemma.json docs/results/stsb_smollm2.json ...
    python benchmarks/results_tables.py docs/results/qmsum_gemma_*.json --plot docs/qmsum_gemma.png

Eval rows become one table per task and dataset (methods down, model x length across); bench files a
table of tokens/s, ratio to plain and peak memory; ``tune --json`` files the grid (windows down, pooling x
bias across).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def eval_tables(rows: list[dict]) -> str:
    out = []
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["dataset"])].append(row)
    for (task, dataset), mine in groups.items():
        columns = list(dict.fromkeys((r["model"], r["max_length"]) for r in mine))
        methods = list(dict.fromkeys(r["method"] for r in mine))
        metric = mine[0]["metric"]
        extra = "macro_f1" if task == "classification" else "recall@100" if "recall@100" in mine[0] else None
        out.append(f"**{task} / {dataset}** ({metric}{', ' + extra if extra else ''}; n = {mine[0]['n']})\n")
        header = " | ".join(f"{m} @{n}" if len({c[1] for c in columns}) > 1 else m for m, n in columns)
        out.append(f"| method | {header} |")
        out.append("|---" * (len(columns) + 1) + "|")
        for method in methods:
            cells = []
            for model, length in columns:
                hit = [r for r in mine if (r["model"], r["max_length"], r["method"]) == (model, length, method)]
                if not hit:
                    cells.append("")
                    continue
                r = hit[0]
                cell = f"{r['score']:.4f}"
                if extra and extra in r:
                    cell += f" / {r[extra]:.4f}"
                cells.append(cell)
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def bench_table(payload: dict) -> str:
    meta = payload["meta"]
    lines = [
        f"{meta['model']} on {meta['device']} ({meta['dtype']}, {meta['threads']} threads, "
        f"{meta['batch_tokens']} padded tokens per batch, kv layers {meta['kv_layers']})\n",
        "| method | length | batch | tokens/s | x plain | peak MB |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['method']} | {r['length']} | {r['batch']} | {r['tokens_per_s']:.0f} | "
            f"{r['ratio_to_plain']:.3f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def tune_table(payload: dict) -> str:
    grid = payload["grid"]
    windows = list(dict.fromkeys(tuple(p["layers"]) for p in grid))
    settings = list(dict.fromkeys((p["pooling"], p["bias"]) for p in grid))
    best = payload["best"]
    lines = [
        f"{payload['model']}, tune {payload['task']} on {payload['dataset']} ({payload['metric']}); "
        f"start {payload['baseline']['layers']} bias {payload['baseline']['bias']:g} "
        f"{payload['baseline']['pooling']}: {payload['baseline']['score']:.4f}; "
        f"no re-routing: {payload['no_rerouting']['score']:.4f}\n",
        "| layers | " + " | ".join(f"{pool} b={bias:g}" for pool, bias in settings) + " |",
        "|---" * (len(settings) + 1) + "|",
    ]
    for window in windows:
        cells = []
        for pool, bias in settings:
            hit = [p for p in grid if (tuple(p["layers"]), p["pooling"], p["bias"]) == (window, pool, bias)]
            point = hit[0] if hit else None
            mark = point is not None and point == best
            cells.append("" if point is None else f"**{point['score']:.4f}**" if mark else f"{point['score']:.4f}")
        lines.append(f"| {list(window)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    """The length sweep of the given rows (as ``eval --plot`` draws it for one run)."""
    from kvembed_rag.eval.harness import EvalRow, plot_length_sweep

    fields = set(EvalRow.__dataclass_fields__) - {"extra"}
    plot_length_sweep([EvalRow(**{k: v for k, v in r.items() if k in fields}) for r in rows], path)


def main() -> int:
    args = sys.argv[1:]
    target = None
    if "--plot" in args:
        at = args.index("--plot")
        target = args[at + 1]
        del args[at : at + 2]
    rows: list[dict] = []
    for name in args:
        payload = json.loads(Path(name).read_text())
        if isinstance(payload, dict) and "meta" in payload:
            print(bench_table(payload))
        elif isinstance(payload, dict) and "grid" in payload:
            print(tune_table(payload))
        else:
            rows.extend(payload)
    if rows:
        print(eval_tables(rows))
        if target:
            plot(rows, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
