r"""A document prior on the shipped path: each passage's fused score plus its document's score.

    python benchmarks/passage_document_prior.py --samples B,C --documents 32 --parts 4 --size 2048 --max-length 2240 \
        --dtype bfloat16 --json docs/results/passage_document_prior_dev32.json

``final(p) = fused(p) + g * minmax(prior(document of p))`` over the shipped path's top 100 candidates (min-max over
them; others stay out), with two priors that need no forward pass: ``mean``, the query's cosine with the normalised
mean of the document's passage vectors (whitened, unit), and ``best``, the document's best fused candidate score.
Vectors come from the eval cache (``--parts``: assembled from the smaller samples' cache, as in
``passage_bm25_params.py``). The pre-registered rule this was run under: docs/RESULTS.md, "A document prior".
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_postprocess import ScoreRows, parse_windows, passage_parser, passage_setup, shipped_sides


def with_prior(fused: np.ndarray, prior: np.ndarray, documents: np.ndarray, weight: float) -> np.ndarray:
    """``(queries, passages)``: ``fused`` (``-inf`` outside the candidates) plus ``weight`` times the min-max
    normalised ``prior`` ``(queries, documents)`` of each candidate's document (``documents``: ``(passages,)`` ids)."""
    out = np.full(fused.shape, -np.inf)
    for row in range(fused.shape[0]):
        candidates = np.flatnonzero(np.isfinite(fused[row]))
        values = prior[row, documents[candidates]]  # (candidates,)
        span = values.max() - values.min() if len(values) else 0.0
        scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
        out[row, candidates] = fused[row, candidates] + weight * scaled
    return out


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.add_argument("--max-length", type=int, default=512, help="the embedder's (as passage_hybrid.py ran)")
    parser.add_argument("--weights", default="0.1,0.25,0.5", help="the prior's weights g")
    parser.add_argument("--priors", default="mean,best")
    parser.add_argument(
        "--hybrid", default="weighted:0.5+feedback:5+document:0", help="the fusion the prior is added to"
    )
    args = parser.parse_args(argv)
    setup = passage_setup(args, args.max_length)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import bm25_scores, hybrid_scores, prepare
    from kvembed_rag.retrieval.lexical import BM25Params, HybridConfig

    base, task = setup.base, setup.task
    fusion = HybridConfig.parse(args.hybrid)
    rows = ScoreRows(size=args.size, hybrid=fusion.label())

    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        run = prepare(task.sample(args.documents, sample), base.token_offsets, size=args.size)
        passages = [p.text for p in run.passages]
        questions = [q.text for q in run.queries]
        names = sorted({p.document for p in run.passages})
        documents = np.asarray([names.index(p.document) for p in run.passages])  # (passages,)
        lexical = bm25_scores(run.passages, run.queries, BM25Params())
        rows.add(sample, "bm25", lexical, run)
        bm25_top = hybrid_scores(lexical, lexical, HybridConfig("weighted", 1.0, feedback=0, document_prior=0))
        for weight in (float(w) for w in args.weights.split(",")):  # the same prior on BM25 alone
            bm25_best = np.stack([[row[documents == d].max() for d in range(len(names))] for row in bm25_top])
            bm25_best[~np.isfinite(bm25_best)] = 0.0
            rows.add(
                sample, f"bm25 + best g{weight}", with_prior(bm25_top, bm25_best, documents, weight), run, g=weight
            )
        for window in parse_windows(args.windows):
            label, queries, docs = shipped_sides(setup, args, window, sample, passages, questions)
            fused = hybrid_scores(queries @ docs.T, lexical, fusion, queries=queries, directions=docs)
            rows.add(sample, f"{label} + bm25", fused, run, window=label)
            shipped = hybrid_scores(
                queries @ docs.T, lexical, HybridConfig(), queries=queries, directions=docs,
                documents=[p.document for p in run.passages],
            )  # fmt: skip
            rows.add(sample, f"{label} + bm25, shipped ({HybridConfig().label()})", shipped, run, window=label)
            means = np.stack([docs[documents == d].mean(0) for d in range(len(names))])  # (documents, dim)
            means /= np.linalg.norm(means, axis=1, keepdims=True)
            priors = {"mean": queries @ means.T}  # (queries, documents)
            # (queries, documents) each document's best candidate (-inf without one: read for candidates only)
            priors["best"] = np.stack([fused[:, documents == d].max(1) for d in range(len(names))], axis=1)
            for name in args.priors.split(","):
                for weight in (float(w) for w in args.weights.split(",")):
                    scores = with_prior(fused, priors[name], documents, weight)
                    moved = float(np.mean(scores.argmax(1) != fused.argmax(1)))  # questions whose first passage changed
                    rows.add(
                        sample,
                        f"{label} + bm25 + {name} g{weight}",
                        scores,
                        run,
                        window=label,
                        prior=name,
                        g=weight,
                        first_changed=moved,
                    )
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
