r"""Re-routing on one side only: documents re-routed and queries not, or the reverse, on the retrieval families.

    python benchmarks/one_sided_reroute.py --window 8,9 --json docs/results/one_sided_reroute_gemma.json

Every vector comes from the evaluation cache that ``window_search.py`` (SciFact of its large protocol, samples A, B
and C) and ``passage_hybrid.py`` (QMSum passages of 256 tokens, samples A to D) filled, so nothing is embedded:
a combination whose vectors are not cached is reported as missing. Each side is post-processed with the
statistics fitted (``whiten:0.6``, as shipped) on the calibration texts under its own window, so a one-sided
embedder would give exactly these vectors. Rows: (document window, query window) for the window and ``layers=[]``
on both sides; SciFact nDCG@10 per sample, passages dense and fused with BM25 (``weighted:0.5``, as shipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_postprocess import passage_setup
from postprocess_study import _cached, scifact_samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--window", default="8,9", help="the re-routed window (the other side: layers=[])")
    parser.add_argument("--scifact-samples", default="A,B,C")
    parser.add_argument("--passage-samples", default="A,B,C,D")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # window_search.py's and passage_hybrid.py's embedders: max_length 512, hybrid pooling, bias 1, raw vectors
    setup = passage_setup(args, 512)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import bm25_scores, hybrid_scores, prepare
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import HybridConfig

    window = [int(x) for x in args.window.split(",")]
    base, cache, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    sides = {"on": base.variant(layers=window), "off": base.variant(layers=[])}
    stats = {k: fit(cache.encode(e, calibration, "document")[0], parse_spec("whiten:0.6")) for k, e in sides.items()}
    combos = [(d, q) for d in ("on", "off") for q in ("on", "off")]
    rows: list[dict[str, Any]] = []

    def vectors(side: str, texts: list[str], role: str, max_length: int | None = None) -> np.ndarray | None:
        embedder = sides[side] if max_length is None else sides[side].variant(max_length=max_length)
        if not _cached(cache, embedder, texts, role):
            return None
        return apply(cache.encode(embedder, texts, role)[0], stats[side])

    names = tuple(s.strip() for s in args.scifact_samples.split(",") if s.strip())
    for sample in scifact_samples(50, 200, 96, names):
        docs_texts, _ = sample.texts["docs"]
        query_texts, _ = sample.texts["queries"]
        for d, q in combos:
            docs = vectors(d, docs_texts, "document", sample.max_length)
            queries = vectors(q, query_texts, "query", sample.max_length)
            score = None
            if docs is not None and queries is not None:
                score = round(sample.score({"docs": docs, "queries": queries}), 4)
            rows.append(dict(family="scifact", sample=sample.name, docs=d, queries=q, system="dense", ndcg=score))

    fusion = HybridConfig.parse("weighted:0.5+feedback:0+document:0")  # the plain fusion
    for name in (s.strip() for s in args.passage_samples.split(",") if s.strip()):
        run = prepare(task.sample(4, name), base.token_offsets, size=256)
        passages = [p.text for p in run.passages]
        questions = [q.text for q in run.queries]
        lexical = bm25_scores(run.passages, run.queries)
        for d, q in combos:
            docs, queries = vectors(d, passages, "document"), vectors(q, questions, "query")
            for system in ("dense", "hybrid"):
                score = None
                if docs is not None and queries is not None:
                    dense = queries @ docs.T
                    scores = dense if system == "dense" else hybrid_scores(dense, lexical, fusion)
                    score = round(run.score(scores)["ndcg@10"], 4)
                extra = {"questions": len(questions)}
                rows.append(dict(family="passages", sample=name, docs=d, queries=q, system=system, ndcg=score, **extra))
    report(rows, window)
    if args.json:
        args.json.write_text(json.dumps({"args": {**vars(args), "json": str(args.json)}, "rows": rows}, indent=1))
    return 0


def report(rows: list[dict[str, Any]], window: list[int]) -> None:
    """One line per (family, system, combination): each sample, then SciFact's mean and passages' B+C+D pooled
    (weighted by questions)."""
    label = {"on": ",".join(map(str, window)), "off": "off"}
    keys = sorted({(r["family"], r["system"]) for r in rows})
    for family, system in keys:
        print(f"\n{family} ({system}), nDCG@10: documents / queries")
        for d, q in [(d, q) for d in ("on", "off") for q in ("on", "off")]:
            mine = [r for r in rows if (r["family"], r["system"], r["docs"], r["queries"]) == (family, system, d, q)]
            cells = [f"{r['sample']} {r['ndcg'] if r['ndcg'] is not None else 'missing'}" for r in mine]
            scored = [r for r in mine if r["ndcg"] is not None]
            if family == "scifact" and scored:
                cells.append(f"mean {np.mean([r['ndcg'] for r in scored]):.4f}")
            later = [r for r in scored if r["sample"] in "BCD"]
            if family == "passages" and later:
                pooled = sum(r["ndcg"] * r["questions"] for r in later) / sum(r["questions"] for r in later)
                cells.append(f"B+C+D {pooled:.4f}")
            print(f"  {label[d]:>5} / {label[q]:<5} " + "  ".join(cells))


if __name__ == "__main__":
    raise SystemExit(main())
