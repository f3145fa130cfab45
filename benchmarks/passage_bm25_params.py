r"""BM25's parameters (k1, b) and long-document variants (BM25+, BM25L) on the lexical side of the shipped path.

    python benchmarks/passage_bm25_params.py --samples C,D,E,F,G,H,I,J,K,L --documents 8 --windows "8,9" \
        --size 2048 --max-length 2240 --dtype bfloat16 --json docs/results/passage_bm25_params_dev.json

Each grid point replaces BM25 everywhere in the shipped path: the fusion's lexical side and the feedback's fused
top 5 (``weighted:0.5+feedback:5`` over kv ``whiten:0.6``). Rows per sample: BM25 alone and the shipped path at
every ``method x k1 x b``; the label ``lucene k1.2 b0.75`` is what ships. Vectors come from the eval cache that
``passage_hybrid.py`` fills with the same ``--size`` and ``--max-length``. The pre-registered rule this was run
under: docs/RESULTS.md, "BM25's parameters at 2,048-token passages".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from passage_postprocess import ScoreRows, parse_windows, passage_parser, passage_setup, shipped_sides


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.add_argument("--max-length", type=int, default=512, help="the embedder's (as passage_hybrid.py ran)")
    parser.add_argument("--methods", default="lucene,bm25+,bm25l", help="bm25s's variants")
    parser.add_argument("--k1s", default="0.9,1.2,1.6,2.0")
    parser.add_argument("--bs", default="0.5,0.75,0.9")
    parser.add_argument(
        "--hybrid", default="weighted:0.5+feedback:5+document:0", help="the fusion (the path P4 was decided on)"
    )
    args = parser.parse_args(argv)
    setup = passage_setup(args, args.max_length)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import bm25_scores, hybrid_scores, prepare
    from kvembed_rag.retrieval.lexical import BM25Params, HybridConfig

    base, task = setup.base, setup.task
    fusion = HybridConfig.parse(args.hybrid)
    grid = [
        BM25Params(k1=float(k1), b=float(b), method=method)
        for method in args.methods.split(",")
        for k1 in args.k1s.split(",")
        for b in args.bs.split(",")
    ]
    rows = ScoreRows(size=args.size, hybrid=fusion.label())

    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        run = prepare(task.sample(args.documents, sample), base.token_offsets, size=args.size)
        passages = [p.text for p in run.passages]
        questions = [q.text for q in run.queries]
        lexical = {params: bm25_scores(run.passages, run.queries, params) for params in grid}
        for params, scores in lexical.items():
            extra = {"method": params.method, "k1": params.k1, "b": params.b}
            rows.add(sample, f"bm25 {params.method} k{params.k1} b{params.b}", scores, run, **extra)
        for window in parse_windows(args.windows):
            label, queries, docs = shipped_sides(setup, args, window, sample, passages, questions)
            dense = queries @ docs.T  # (queries, passages)
            rows.add(sample, label, dense, run, window=label)
            for params, scores in lexical.items():
                fused = hybrid_scores(dense, scores, fusion, queries=queries, directions=docs)
                extra = {"window": label, "method": params.method, "k1": params.k1, "b": params.b}
                name = f"{label} + bm25 {params.method} k{params.k1} b{params.b}"
                rows.add(sample, name, fused, run, **extra)
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
