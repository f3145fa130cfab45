r"""Passage retrieval on QMSum: what the query side alone can change (query prompt, fusion normalisation).

    python benchmarks/passage_query_side.py --samples A --windows "8,9;off" --size 256 \
        --json docs/results/passage_query_side_A.json

Passages are embedded once with kv's document prompt (the eval cache ``passage_hybrid.py`` fills, so a window and
passage size that script has run cost nothing here); only the questions are embedded again, once per query prompt:

- ``Q0`` the shipped query prompt; ``Q1`` the document prompt for queries too; ``Q2`` a query prompt that asks for
  the context answering the query (the candidates of the pre-registration quoted in docs/RESULTS.md);
- each dense side alone (``whiten:0.6`` fitted on the calibration texts as documents, as shipped) and fused with
  BM25 (BM25's share 0.5) by the shipped min-max score fusion and by z-score fusion (each side standardised over
  the candidate set).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_hybrid import bm25_matrix
from passage_postprocess import ScoreRows, parse_windows, passage_parser, passage_setup

QUERY_PROMPTS = {
    "Q0": "Query: {text} Compress the Query in one word:",
    "Q1": "Context: {text} Compress the Context in one word:",
    "Q2": "Query: {text} Compress the Context that answers the Query in one word:",
}


def zscore_fusion(dense: np.ndarray, lexical: np.ndarray, weight: float, candidates: int = 100) -> np.ndarray:
    """``(queries, passages)`` fused scores: each side standardised over the union of both sides' top
    ``candidates`` (the shipped fusion's candidate set), then ``(1 - weight) * dense + weight * lexical``;
    passages outside the set score ``-inf``."""
    from kvembed_rag.retrieval.lexical import candidate_union

    out = np.full(dense.shape, -np.inf)
    for row in range(dense.shape[0]):
        pool = candidate_union(dense[row], lexical[row], candidates)
        d, b = dense[row, pool].astype(np.float64), lexical[row, pool].astype(np.float64)
        d = (d - d.mean()) / (d.std() or 1.0)
        b = (b - b.mean()) / (b.std() or 1.0)
        out[row, pool] = (1.0 - weight) * d + weight * b
    return out


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.add_argument("--max-length", type=int, default=512, help="the embedder's (512 shares the caches)")
    parser.add_argument("--prompts", default="Q0,Q1,Q2", help=f"query prompts, from {sorted(QUERY_PROMPTS)}")
    args = parser.parse_args(argv)
    setup = passage_setup(args, args.max_length)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import hybrid_scores, prepare
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import HybridConfig

    base, cache, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    shipped_fusion = HybridConfig.parse("weighted:0.5+feedback:0+document:0")  # the plain fusion
    rows = ScoreRows(size=args.size)
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        run = prepare(task.sample(args.documents, sample), base.token_offsets, size=args.size)
        passages = [p.text for p in run.passages]
        questions = [q.text for q in run.queries]
        lexical = bm25_matrix(passages, questions, False)
        rows.add(sample, "bm25", lexical, run)
        for window in parse_windows(args.windows):
            embedder = base.variant(layers=window)
            label = "kv " + (",".join(map(str, window)) or "off")
            stats = fit(cache.encode(embedder, calibration, "document")[0], parse_spec("whiten:0.6"))
            docs = apply(cache.encode(embedder, passages, "document")[0], stats)
            for name in prompts:
                asker = embedder.variant(prompts={"query": QUERY_PROMPTS[name]})
                dense = apply(cache.encode(asker, questions, "query")[0], stats) @ docs.T
                rows.add(sample, f"{label} {name}", dense, run, window=label, prompt=name)
                fused = hybrid_scores(dense, lexical, shipped_fusion)
                rows.add(sample, f"{label} {name} + bm25 minmax", fused, run, window=label, prompt=name)
                zfused = zscore_fusion(dense, lexical, 0.5)
                rows.add(sample, f"{label} {name} + bm25 zscore", zfused, run, window=label, prompt=name)
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
