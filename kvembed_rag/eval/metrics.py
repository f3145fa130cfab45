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


def accuracy(predicted: list[str] | np.ndarray, gold: list[str] | np.ndarray) -> float:
    p, g = np.asarray(predicted), np.asarray(gold)
    if p.shape != g.shape or not len(g):
        raise ValueError(f"need two equally long non-empty label sequences; got {p.shape} and {g.shape}")
    return float((p == g).mean())


def macro_f1(predicted: list[str] | np.ndarray, gold: list[str] | np.ndarray) -> float:
    """Unweighted mean of per-label F1 over the labels present in ``gold`` or ``predicted`` (sklearn's macro)."""
    p, g = np.asarray(predicted), np.asarray(gold)
    if p.shape != g.shape or not len(g):
        raise ValueError(f"need two equally long non-empty label sequences; got {p.shape} and {g.shape}")
    scores = []
    for label in np.union1d(p, g):
        tp = float(((p == label) & (g == label)).sum())
        fp = float(((p == label) & (g != label)).sum())
        fn = float(((p != label) & (g == label)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    probabilities = counts[counts > 0] / total
    return float(-(probabilities * np.log(probabilities)).sum())


def v_measure(predicted: list[int] | np.ndarray, gold: list[str] | np.ndarray) -> float:
    """Harmonic mean of homogeneity and completeness (Rosenberg & Hirschberg 2007; sklearn's beta=1)."""
    _, p = np.unique(np.asarray(predicted), return_inverse=True)
    _, g = np.unique(np.asarray(gold), return_inverse=True)
    if len(p) != len(g) or not len(g):
        raise ValueError("need two equally long non-empty label sequences")
    table = np.zeros((g.max() + 1, p.max() + 1))  # (classes, clusters)
    np.add.at(table, (g, p), 1)
    n = table.sum()
    h_class, h_cluster = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    rows, cols = np.nonzero(table)
    counts = table[rows, cols]
    cluster_sizes, class_sizes = table.sum(axis=0), table.sum(axis=1)
    # conditional entropies H(class | cluster) and H(cluster | class) from the contingency table
    h_class_given_cluster = float(-(counts / n * np.log(counts / cluster_sizes[cols])).sum())
    h_cluster_given_class = float(-(counts / n * np.log(counts / class_sizes[rows])).sum())
    homogeneity = 1.0 if h_class == 0 else 1 - h_class_given_cluster / h_class
    completeness = 1.0 if h_cluster == 0 else 1 - h_cluster_given_class / h_cluster
    if homogeneity + completeness == 0:
        return 0.0
    return float(2 * homogeneity * completeness / (homogeneity + completeness))
