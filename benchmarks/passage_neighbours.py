r"""Passage retrieval on QMSum with neighbour smoothing: a passage's score moved towards its neighbours'.

    python benchmarks/passage_neighbours.py --samples A,B,C,D --windows "8,9;off" --size 2048 --max-length 2240 \
        --json docs/results/passage_neighbours_2048.json

QMSum's answers are runs of consecutive turns, so a passage next to a strong hit is more likely relevant than its
own score says. Each side's raw score (dense kv cosine under the shipped ``whiten:0.6``; BM25) becomes
``s_i + lam * mean(s_{i-1}, s_{i+1})`` over the passage's neighbours in the same document (one at a document's
ends) before the shipped fusion (BM25's share 0.5). The vectors come from the eval cache ``passage_hybrid.py``
fills with the same ``--size`` and ``--max-length``, so only BM25 and the scoring run here. Rows: BM25, dense and
hybrid, each plain and smoothed per ``--lams``, per window (``off`` = ``layers=[]``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_hybrid import bm25_matrix
from passage_postprocess import ScoreRows, parse_windows, passage_parser, passage_setup


def neighbour_smoothed(scores: np.ndarray, documents: Sequence[str], lam: float) -> np.ndarray:
    """``(queries, passages)`` scores moved towards the mean of each passage's neighbours in its document.

    ``documents[i]`` names passage ``i``'s document; passages of a document are consecutive and in order."""
    n = scores.shape[1]
    doc = np.asarray(documents)
    has_prev = np.zeros(n, bool)
    has_next = np.zeros(n, bool)
    has_prev[1:] = doc[1:] == doc[:-1]
    has_next[:-1] = doc[:-1] == doc[1:]
    prev = np.zeros_like(scores)
    nxt = np.zeros_like(scores)
    prev[:, 1:] = scores[:, :-1]
    nxt[:, :-1] = scores[:, 1:]
    count = has_prev.astype(scores.dtype) + has_next.astype(scores.dtype)  # (passages,)
    total = prev * has_prev + nxt * has_next  # (queries, passages)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return scores + lam * mean


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.add_argument("--max-length", type=int, default=512, help="the embedder's (as passage_hybrid.py ran)")
    parser.add_argument("--lams", default="0.5,1.0", help="neighbour weights, comma-separated")
    args = parser.parse_args(argv)
    setup = passage_setup(args, args.max_length)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import hybrid_scores, prepare
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import HybridConfig

    base, cache, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    fusion = HybridConfig.parse("weighted:0.5+feedback:0+document:0")  # the plain fusion
    lams = [float(x) for x in args.lams.split(",") if x.strip()]
    rows = ScoreRows(size=args.size)
    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        run = prepare(task.sample(args.documents, sample), base.token_offsets, size=args.size)
        passages = [p.text for p in run.passages]
        documents = [p.document for p in run.passages]
        lexical = bm25_matrix(passages, [q.text for q in run.queries], False)
        rows.add(sample, "bm25", lexical, run, lam=0.0)
        for lam in lams:
            rows.add(sample, f"bm25 nb{lam}", neighbour_smoothed(lexical, documents, lam), run, lam=lam)
        for window in parse_windows(args.windows):
            embedder = base.variant(layers=window)
            label = "kv " + (",".join(map(str, window)) or "off")
            stats = fit(cache.encode(embedder, calibration, "document")[0], parse_spec("whiten:0.6"))
            docs = apply(cache.encode(embedder, passages, "document")[0], stats)
            dense = apply(cache.encode(embedder, [q.text for q in run.queries], "query")[0], stats) @ docs.T
            rows.add(sample, label, dense, run, window=label, lam=0.0)
            rows.add(sample, f"{label} + bm25", hybrid_scores(dense, lexical, fusion), run, window=label, lam=0.0)
            for lam in lams:
                smooth_dense = neighbour_smoothed(dense, documents, lam)
                smooth_lexical = neighbour_smoothed(lexical, documents, lam)
                rows.add(sample, f"{label} nb{lam}", smooth_dense, run, window=label, lam=lam)
                fused = hybrid_scores(smooth_dense, smooth_lexical, fusion)
                rows.add(sample, f"{label} + bm25 nb{lam}", fused, run, window=label, lam=lam)
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
