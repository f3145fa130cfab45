"""Metrics in plain numpy."""

from __future__ import annotations

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as scipy.stats.rankdata does."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    for group in np.split(np.arange(len(values)), boundaries):
        if len(group) > 1:
            ranks[order[group]] = ranks[order[group]].mean()
    return ranks


def spearman(a: np.ndarray | list[float], b: np.ndarray | list[float]) -> float:
    """Spearman's rank correlation of two equally long sequences."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two 1-D sequences of equal length >= 2; got {x.shape} and {y.shape}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator else 0.0


def _dcg(gains: list[float]) -> float:
    return float(sum(g / np.log2(i + 2) for i, g in enumerate(gains)))


def ndcg_at_k(ranked: list[str], relevant: dict[str, float], k: int = 10) -> float:
    """nDCG@k with graded gains (BEIR's definition: gain = relevance, log2 discount)."""
    if not relevant:
        return 0.0
    gains = [float(relevant.get(doc, 0.0)) for doc in ranked[:k]]
    ideal = sorted((float(v) for v in relevant.values() if v > 0), reverse=True)[:k]
    best = _dcg(ideal)
    return _dcg(gains) / best if best > 0 else 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, float], k: int = 100) -> float:
    """Share of the relevant documents (relevance > 0) found in the top k."""
    positives = {doc for doc, value in relevant.items() if value > 0}
    if not positives:
        return 0.0
    return len(positives & set(ranked[:k])) / len(positives)


def mrr_at_k(ranked: list[str], relevant: dict[str, float], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document within the top k (0 if none)."""
    for position, doc in enumerate(ranked[:k], start=1):
        if relevant.get(doc, 0.0) > 0:
            return 1.0 / position
    return 0.0
