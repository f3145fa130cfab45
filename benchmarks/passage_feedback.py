r"""Passage retrieval on QMSum with pseudo-relevance feedback on the shipped hybrid: Rocchio (dense) and RM3 (BM25).

    python benchmarks/passage_feedback.py --samples C,D,E,F,G,H,I,J,K,L --documents 8 --windows "8,9;off" \
        --size 2048 --max-length 2240 --dtype bfloat16 --json docs/results/passage_feedback_dev.json

Training-free and without another forward pass: the shipped hybrid's top ``k`` passages for a question (F) feed
back into both sides before they are fused again.

- dense (Rocchio): ``q' = q/|q| + beta * mean_{d in F} d/|d|`` over the whitened vectors;
- BM25 (RM3-style): the question's term distribution ``Q`` moved towards ``R``, the top 20 terms of the mean
  ``tf(t, d)/|d|`` over F, renormalised: ``Q' = (1 - alpha) Q + alpha R``, scored ``sum_t Q'(t) bm25(t, d)``;
- fused again with the shipped fusion (weighted:0.5).

Rows per sample: BM25, MiniLM (``--anchor``), per window the dense side, the shipped hybrid and every
``k x beta x alpha`` point (``fb k3 b0.5 a0.3``); plus BM25 with RM3 alone (F from BM25) and dense with Rocchio
alone (F from dense). Vectors come from the eval cache ``passage_hybrid.py`` fills with the same ``--size`` and
``--max-length``. The pre-registered rule this was run under: docs/RESULTS.md, "Pseudo-relevance feedback".
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from passage_hybrid import bm25_matrix
from passage_neighbours import neighbour_smoothed
from passage_postprocess import ScoreRows, parse_windows, passage_parser, passage_setup

EXPANSION_TERMS = 20


class TermBM25:
    """BM25 (Lucene: k1 1.2, b 0.75) as a ``(terms, passages)`` weight matrix: a weighted query scores by a product."""

    def __init__(self, passages: list[str], k1: float = 1.2, b: float = 0.75) -> None:
        from kvembed_rag.retrieval.lexical import tokenize

        self.tokenize = tokenize
        docs = [tokenize(p) for p in passages]
        self.vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}
        tf = np.zeros((len(self.vocab), len(docs)), np.float64)  # (terms, passages)
        for j, words in enumerate(docs):
            for w in words:
                tf[self.vocab[w], j] += 1
        length = tf.sum(0)  # (passages,)
        df = (tf > 0).sum(1)  # (terms,)
        idf = np.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * length / length.mean())  # (passages,)
        self.weights = idf[:, None] * tf / (tf + norm)  # (terms, passages)
        self.relative_tf = tf / np.maximum(length, 1)  # (terms, passages): P(t | d)

    def query_distribution(self, text: str) -> np.ndarray:
        """``(terms,)`` the question's known terms' frequencies, summing to 1 (zeros without a known term)."""
        out = np.zeros(len(self.vocab))
        for w in self.tokenize(text):
            if w in self.vocab:
                out[self.vocab[w]] += 1
        return out / max(out.sum(), 1.0)

    def expanded(self, query: np.ndarray, feedback: np.ndarray, alpha: float) -> np.ndarray:
        """``(terms,)`` the query moved towards the top terms of the feedback passages' mean ``P(t | d)``."""
        relevance = self.relative_tf[:, feedback].mean(1)  # (terms,)
        top = np.argsort(-relevance, kind="stable")[:EXPANSION_TERMS]
        model = np.zeros_like(relevance)
        model[top] = relevance[top] / max(relevance[top].sum(), 1e-12)
        return (1 - alpha) * query + alpha * model


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """``(queries, k)`` the positions of each row's ``k`` highest scores (``-inf`` rows rank last)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def rocchio(queries: np.ndarray, docs: np.ndarray, feedback: np.ndarray, beta: float) -> np.ndarray:
    """``(queries, passages)`` cosine scores of each query moved by ``beta`` towards its feedback passages' mean."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)  # (queries, dim)
    d = docs / np.linalg.norm(docs, axis=1, keepdims=True)  # (passages, dim)
    moved = q + beta * d[feedback].mean(1)  # (queries, dim); d[feedback]: (queries, k, dim)
    return moved @ d.T


def rm3(bm25: TermBM25, questions: list[str], feedback: np.ndarray, alpha: float) -> np.ndarray:
    """``(queries, passages)`` BM25 of each question expanded with its feedback passages' top terms."""
    rows = [bm25.expanded(bm25.query_distribution(q), feedback[i], alpha) for i, q in enumerate(questions)]
    return np.stack(rows) @ bm25.weights  # (queries, terms) @ (terms, passages)


def main(argv: list[str] | None = None) -> int:
    parser = passage_parser(__doc__)
    parser.add_argument("--max-length", type=int, default=512, help="the embedder's (as passage_hybrid.py ran)")
    parser.add_argument("--anchor", default="all-MiniLM-L6-v2", help="sentence-transformers model ('' for none)")
    parser.add_argument("--ks", default="3,5", help="feedback depths")
    parser.add_argument("--betas", default="0,0.5,1.0", help="Rocchio weights of the dense side")
    parser.add_argument("--alphas", default="0,0.3,0.5", help="RM3 interpolation weights of the BM25 side")
    parser.add_argument("--lams", default="0", help="neighbour smoothing of both sides (passage_neighbours.py)")
    parser.add_argument("--weights", default="0.5", help="BM25's shares in the fusion")
    args = parser.parse_args(argv)
    setup = passage_setup(args, args.max_length)
    if setup is None:
        return 0
    from kvembed_rag.eval.passages import AnchorEncoder, hybrid_scores, prepare
    from kvembed_rag.postprocess import apply, fit, parse_spec
    from kvembed_rag.retrieval.lexical import HybridConfig

    base, cache, calibration, task = setup.base, setup.cache, setup.calibration, setup.task
    anchor = AnchorEncoder(args.anchor) if args.anchor else None
    ks = [int(x) for x in args.ks.split(",")]
    betas = [float(x) for x in args.betas.split(",")]
    alphas = [float(x) for x in args.alphas.split(",")]
    lams = [float(x) for x in args.lams.split(",")]
    weights = [float(x) for x in args.weights.split(",")]
    rows = ScoreRows(size=args.size)
    for sample in (s.strip() for s in args.samples.split(",") if s.strip()):
        run = prepare(task.sample(args.documents, sample), base.token_offsets, size=args.size)
        passages = [p.text for p in run.passages]
        questions = [q.text for q in run.queries]
        bm25 = TermBM25(passages)
        lexical = rm3(bm25, questions, np.zeros((len(questions), 1), int), 0.0)
        reference = bm25_matrix(passages, questions, False)  # bm25s: the weight matrix must reproduce it
        known = np.array([sum(w in bm25.vocab for w in bm25.tokenize(q)) for q in questions])  # (queries,)
        if not np.allclose(reference, lexical * known[:, None], atol=1e-4):
            raise AssertionError("TermBM25 does not reproduce bm25s's scores")
        rows.add(sample, "bm25", lexical, run)
        documents = [p.document for p in run.passages]

        def smooth(scores: np.ndarray, lam: float, documents: list[str] = documents) -> np.ndarray:
            return neighbour_smoothed(scores, documents, lam) if lam else scores

        for lam in lams:
            if lam:
                rows.add(sample, f"bm25 nb{lam}", smooth(lexical, lam), run, lam=lam)
        for k in ks:
            for alpha in alphas[1:] if alphas[0] == 0 else alphas:
                rows.add(sample, f"bm25 rm3 k{k} a{alpha}", rm3(bm25, questions, top_k(lexical, k), alpha), run)
        if anchor is not None:
            rows.add(
                sample, anchor.name, anchor.encode(questions, "query") @ anchor.encode(passages, "document").T, run
            )
        for window in parse_windows(args.windows):
            embedder = base.variant(layers=window)
            label = "kv " + (",".join(map(str, window)) or "off")
            stats = fit(cache.encode(embedder, calibration, "document")[0], parse_spec("whiten:0.6"))
            docs = apply(cache.encode(embedder, passages, "document")[0], stats)
            queries = apply(cache.encode(embedder, questions, "query")[0], stats)
            dense = rocchio(queries, docs, np.zeros((len(questions), 1), int), 0.0)
            rows.add(sample, label, dense, run, window=label)
            for k in ks:
                for beta in betas[1:] if betas[0] == 0 else betas:
                    alone = rocchio(queries, docs, top_k(dense, k), beta)
                    rows.add(sample, f"{label} rocchio k{k} b{beta}", alone, run, window=label)
            for lam in lams:
                for weight in weights:
                    fusion = HybridConfig.parse(f"weighted:{weight}+feedback:0+document:0")
                    suffix = "" if (lam, weight) == (0.0, 0.5) else f" nb{lam} w{weight}"
                    shipped = hybrid_scores(smooth(dense, lam), smooth(lexical, lam), fusion)
                    rows.add(sample, f"{label} + bm25{suffix}", shipped, run, window=label, lam=lam, w=weight)
                    for k in ks:
                        feedback = top_k(shipped, k)
                        for beta in betas:
                            moved = smooth(rocchio(queries, docs, feedback, beta), lam)
                            for alpha in alphas:
                                if beta == 0 and alpha == 0:
                                    continue
                                expanded = smooth(rm3(bm25, questions, feedback, alpha), lam)
                                fused = hybrid_scores(moved, expanded, fusion)
                                system = f"{label} + bm25 fb k{k} b{beta} a{alpha}{suffix}"
                                extra = {"k": k, "beta": beta, "alpha": alpha, "lam": lam, "w": weight}
                                rows.add(sample, system, fused, run, window=label, **extra)
        rows.write(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
