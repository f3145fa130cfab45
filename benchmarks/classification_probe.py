"""Why does a method win or lose classification? Same split as `kvembed-rag eval classification`, more probes.

    python benchmarks/classification_probe.py [--model default] [--limit 600] [--json FILE]

For each embedding variant (default: kv with its hybrid pooling, kv with last-token pooling, PromptEOL and
mean) it reports, on the seeded Banking77 split that `eval classification --limit N` uses:

- ``raw``: accuracy of the MTEB-style logistic regression (L-BFGS, C=1) on the unit vectors, as `eval` does;
- ``std``: the same model on standardised features (train mean and std per dimension), as
  `eval classification --standardize` does;
- ``1nn``: nearest training text by cosine after centring on the train mean (no fitting at all);
- ``cos``: mean cosine between test texts of *different* labels (anisotropy: 1.0 = all vectors alike).

Vectors come from the same embedding cache as `eval`, so variants already evaluated cost nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kvembed_rag import KVEmbedder
from kvembed_rag.eval.cache import EmbeddingCache
from kvembed_rag.eval.learners import fit_predict_logistic
from kvembed_rag.eval.metrics import accuracy, macro_f1
from kvembed_rag.eval.scoring import CachedEncoder, standardize_features
from kvembed_rag.eval.tasks import load_classification

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
VARIANTS = {
    "kv": dict(method="kv"),
    "kv+last": dict(method="kv", pooling="last"),
    "kv+mean": dict(method="kv", pooling="mean"),
    "prompteol": dict(method="prompteol"),
    "mean": dict(method="mean"),
}


def nearest_neighbour(train: np.ndarray, train_y: list[str], test: np.ndarray) -> list[str]:
    mean = train.mean(axis=0)  # (d,)
    a = train - mean
    b = test - mean
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-12
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    return [train_y[i] for i in (b @ a.T).argmax(axis=1)]  # (m, n) -> (m,)


def cross_label_cosine(x: np.ndarray, labels: list[str]) -> float:
    unit = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    sims = unit @ unit.T  # (m, m)
    y = np.asarray(labels)
    different = y[:, None] != y[None, :]
    return float(sims[different].mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(DATA), help="a classification folder or file, as for eval")
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not Path(args.data).exists():
        print(f"no classification data at {args.data}; skipping", file=sys.stderr)
        return 0
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    train, test, how = load_classification(args.data, limit=args.limit, seed=args.seed)
    print(f"{how}; {len(train.texts)} train / {len(test.texts)} test, {len(set(train.labels))} labels", file=sys.stderr)
    base = KVEmbedder.from_pretrained(args.model, show_progress=False)
    cache = EmbeddingCache()
    rows = []
    print(f"{'variant':<12} {'raw acc/F1':>14} {'std acc/F1':>14} {'1nn acc':>8} {'cos':>6}")
    for name in names:
        encoder = CachedEncoder(base.variant(**VARIANTS[name]), cache)
        x_train = encoder.encode(train.texts, "document")  # (n, d)
        x_test = encoder.encode(test.texts, "document")  # (m, d)
        raw = fit_predict_logistic(x_train, train.labels, x_test)
        z_train, z_test = standardize_features(x_train, x_test)
        std = fit_predict_logistic(z_train, train.labels, z_test)
        nn = nearest_neighbour(x_train, train.labels, x_test)
        row = {
            "variant": name,
            "raw_accuracy": accuracy(raw, test.labels),
            "raw_macro_f1": macro_f1(raw, test.labels),
            "std_accuracy": accuracy(std, test.labels),
            "std_macro_f1": macro_f1(std, test.labels),
            "nn_accuracy": accuracy(nn, test.labels),
            "cross_label_cosine": cross_label_cosine(x_test, test.labels),
            "cached": encoder.stats.cached,
        }
        rows.append(row)
        print(
            f"{name:<12} {row['raw_accuracy']:.4f}/{row['raw_macro_f1']:.4f} "
            f"{row['std_accuracy']:.4f}/{row['std_macro_f1']:.4f} {row['nn_accuracy']:>8.4f} "
            f"{row['cross_label_cosine']:>6.3f}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "limit": args.limit, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
