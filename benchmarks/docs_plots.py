"""Redraw every figure in docs/ from the stored numbers, with the shared look (kvembed_rag.plotting):

    python benchmarks/docs_plots.py [--out docs]

* ``qmsum_gemma.png``, ``qmsum_smollm2.png``: the QMSum length sweeps, from ``docs/results/qmsum_*.json``
* ``id_gemma3_270m.png``, ``id_smollm2_135m.png``: the ID curves, from ``kvembed_rag/data/layer_selections.json``
* ``bench_cpu_gemma.png``: throughput and memory, from ``docs/results/bench_cpu_gemma.json``
* ``bench_dtypes_gemma.png``: tokens/s and fraction of the matmul peak per dtype, from ``bench_dtypes_gemma.json``

Nothing is recomputed; the figures change only in how they are drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvembed_rag.eval.harness import EvalRow, plot_length_sweep  # noqa: E402
from kvembed_rag.eval.throughput import BenchRow, plot_dtype_rows, plot_rows  # noqa: E402
from kvembed_rag.layer_selection import LayerSelection, plot_curve  # noqa: E402
from kvembed_rag.plotting import bench_title, model_name  # noqa: E402

#: the ID curves' files, by the --model each shipped selection was measured with
ID_FILES = {"default": "id_gemma3_270m.png", "smollm2": "id_smollm2_135m.png"}


def eval_rows(pattern: str) -> list[EvalRow]:
    fields = set(EvalRow.__dataclass_fields__) - {"extra"}
    rows = []
    for path in sorted((ROOT / "docs" / "results").glob(pattern)):
        rows += [EvalRow(**{k: v for k, v in r.items() if k in fields}) for r in json.loads(path.read_text())]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs (default docs/)")
    out = Path(parser.parse_args().out)
    written = []
    for model in ("gemma", "smollm2"):
        rows = eval_rows(f"qmsum_{model}_*.json")
        if rows:
            plot_length_sweep(rows, out / f"qmsum_{model}.png")
            written.append(f"qmsum_{model}.png ({len(rows)} rows)")
    for entry in json.loads((ROOT / "kvembed_rag" / "data" / "layer_selections.json").read_text()):
        spec = entry["note"].split("--model ")[1].split()[0]
        fields = set(LayerSelection.__dataclass_fields__)
        selection = LayerSelection(**{k: v for k, v in entry.items() if k in fields})
        title = f"{model_name(spec)}: TwoNN ID of last-token states ({selection.n_texts} calibration texts)"
        plot_curve(selection, out / ID_FILES[spec], title=title)
        written.append(ID_FILES[spec])
    payload = json.loads((ROOT / "docs" / "results" / "bench_cpu_gemma.json").read_text())
    plot_rows([BenchRow(**r) for r in payload["rows"]], str(out / "bench_cpu_gemma.png"), bench_title(payload["meta"]))
    written.append("bench_cpu_gemma.png")
    payload = json.loads((ROOT / "docs" / "results" / "bench_dtypes_gemma.json").read_text())
    rows = [BenchRow(**r) for r in payload["rows"]]
    plot_dtype_rows(rows, str(out / "bench_dtypes_gemma.png"), bench_title(payload["meta"]))
    written.append("bench_dtypes_gemma.png")
    print("wrote", ", ".join(written), "to", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
