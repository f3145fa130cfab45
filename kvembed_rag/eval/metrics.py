"""Metrics, computed by the libraries MTEB and BEIR run, so our scores are comparable with published ones.

Retrieval metrics come from ``pytrec_eval`` (trec_eval's C code, what BEIR and MTEB call): nDCG@k with graded
gains (gain = relevance, log2 discount), Recall@k over documents with relevance > 0, and MRR@k (trec_eval's
``recip_rank`` on the top k). Rank correlation is scipy's, label metrics are scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: pytrec_eval measure names behind our metric names
_TREC_MEASURES = {"ndcg@10": "ndcg_cut_10", "recall@100": "recall_100"}


#: the import names of the [eval] extra's libraries
EVAL_EXTRA = {"scipy": "scipy", "sklearn": "scikit-learn", "pytrec_eval": "pytrec-eval-terrier"}


def missing_eval_libraries() -> list[str]:
    """The [eval] extra's distributions that are not installed (empty when evaluation can run)."""
    import importlib.util

    def missing(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ImportError:  # an import hook that refuses it: as good as absent
            return True

    return [dist for module, dist in EVAL_EXTRA.items() if missing(module)]


def spearman(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (``scipy.stats.spearmanr``; ties averaged)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two 1-D sequences of equal length >= 2; got {x.shape} and {y.shape}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0  # a constant sequence has no ranking (scipy would return NaN)
    return float(spearmanr(x, y).statistic)


def _run_from_rankings(ranked: Sequence[Sequence[str]], query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """pytrec_eval's run format from ranked lists: the score falls with the rank, so our order is kept exactly
    (trec_eval re-sorts by score and breaks ties by document id)."""
    return {q: {doc: float(len(r) - i) for i, doc in enumerate(r)} for r, q in zip(ranked, query_ids, strict=True)}


def retrieval_metrics(
    ranked: Sequence[Sequence[str]],
    query_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, float]],
    *,
    ndcg_k: int = 10,
    recall_k: int = 100,
    mrr_k: int = 10,
) -> dict[str, list[float]]:
    """Per-query ``ndcg@k``, ``recall@k`` and ``mrr@k`` (lists in ``query_ids`` order) from pytrec_eval."""
    import pytrec_eval

    judged = {q: {doc: round(float(v)) for doc, v in qrels[q].items()} for q in query_ids}
    run = _run_from_rankings(ranked, query_ids)
    measures = {f"ndcg_cut_{ndcg_k}", f"recall_{recall_k}"}
    scores = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(run)
    top = _run_from_rankings([list(r)[:mrr_k] for r in ranked], query_ids)
    reciprocal = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top)
    # a query without any judged-relevant document scores 0 (trec_eval leaves it out of its table)
    return {
        f"ndcg@{ndcg_k}": [scores.get(q, {}).get(f"ndcg_cut_{ndcg_k}", 0.0) for q in query_ids],
        f"recall@{recall_k}": [scores.get(q, {}).get(f"recall_{recall_k}", 0.0) for q in query_ids],
        f"mrr@{mrr_k}": [reciprocal.get(q, {}).get("recip_rank", 0.0) for q in query_ids],
    }


def _one(ranked: list[str], relevant: Mapping[str, float], metric: str, k: int) -> float:
    if not any(float(v) > 0 for v in relevant.values()):
        return 0.0
    values = retrieval_metrics([ranked], ["q"], {"q": relevant}, ndcg_k=k, recall_k=k, mrr_k=k)
    return float(values[f"{metric}@{k}"][0])


def ndcg_at_k(ranked: list[str], relevant: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of one ranked list (BEIR's definition, computed by pytrec_eval)."""
    return _one(ranked, relevant, "ndcg", k)


def recall_at_k(ranked: list[str], relevant: Mapping[str, float], k: int = 100) -> float:
    """Share of the relevant documents (relevance > 0) found in the top k."""
    return _one(ranked, relevant, "recall", k)


def mrr_at_k(ranked: list[str], relevant: Mapping[str, float], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document within the top k (0 if none)."""
    return _one(ranked, relevant, "mrr", k)


def _labels(predicted: Sequence[object] | np.ndarray, gold: Sequence[object] | np.ndarray) -> tuple[np.ndarray, ...]:
    p, g = np.asarray(predicted), np.asarray(gold)
    if p.shape != g.shape or not len(g):
        raise ValueError(f"need two equally long non-empty label sequences; got {p.shape} and {g.shape}")
    return p, g


def accuracy(predicted: list[str] | np.ndarray, gold: list[str] | np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    p, g = _labels(predicted, gold)
    return float(accuracy_score(g, p))


def macro_f1(predicted: list[str] | np.ndarray, gold: list[str] | np.ndarray) -> float:
    """Unweighted mean of per-label F1 (scikit-learn's ``f1_score(average="macro")``, as MTEB reports it)."""
    from sklearn.metrics import f1_score

    p, g = _labels(predicted, gold)
    return float(f1_score(g, p, average="macro", zero_division=0.0))


def v_measure(predicted: list[int] | np.ndarray, gold: list[str] | np.ndarray) -> float:
    """Harmonic mean of homogeneity and completeness (scikit-learn's ``v_measure_score``, MTEB's clustering metric)."""
    from sklearn.metrics import v_measure_score

    p, g = _labels(predicted, gold)
    return float(v_measure_score(g, p))
