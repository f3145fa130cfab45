"""Run an embedder on an evaluation task and score it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import mrr_at_k, ndcg_at_k, recall_at_k, spearman
from .tasks import BeirTask, StsPairs


@dataclass
class Score:
    task: str
    metric: str
    score: float
    n: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "score": round(self.score, 4),
            "n": self.n,
            "seconds": round(self.seconds, 1),
            **{k: round(v, 4) for k, v in self.extra.items()},
        }


def evaluate_sts(embedder: Any, pairs: StsPairs) -> Score:
    """Spearman of cosine similarity against the gold scores (both sides embedded as documents)."""
    start = time.perf_counter()
    first = embedder.encode_documents(pairs.first)
    second = embedder.encode_documents(pairs.second)
    similarity = (first * second).sum(axis=1)
    return Score("sts", "spearman", spearman(similarity, pairs.scores), len(pairs.scores), time.perf_counter() - start)


def rank_documents(query_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: list[str], k: int) -> list[list[str]]:
    """Exact top-k by cosine (vectors are unit-norm), computed in blocks to bound memory."""
    ranked: list[list[str]] = []
    for start in range(0, len(query_vectors), 256):
        scores = query_vectors[start : start + 256] @ doc_vectors.T  # (q, n)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ranked.extend([[doc_ids[j] for j in row] for row in top])
    return ranked


def score_rankings(
    ranked: list[list[str]], query_ids: list[str], qrels: dict[str, dict[str, float]]
) -> dict[str, float]:
    return {
        "ndcg@10": float(np.mean([ndcg_at_k(r, qrels[q], 10) for r, q in zip(ranked, query_ids, strict=True)])),
        "recall@100": float(np.mean([recall_at_k(r, qrels[q], 100) for r, q in zip(ranked, query_ids, strict=True)])),
        "mrr@10": float(np.mean([mrr_at_k(r, qrels[q], 10) for r, q in zip(ranked, query_ids, strict=True)])),
    }


def evaluate_retrieval(embedder: Any, task: BeirTask, *, doc_vectors: np.ndarray | None = None) -> Score:
    """nDCG@10 (headline), Recall@100 and MRR@10 over the task's judged queries."""
    start = time.perf_counter()
    doc_ids, texts = task.document_texts()
    if doc_vectors is None:
        doc_vectors = embedder.encode_documents(texts)
    query_ids = list(task.queries)
    query_vectors = embedder.encode_queries([task.queries[q] for q in query_ids])
    metrics = score_rankings(rank_documents(query_vectors, doc_vectors, doc_ids, 100), query_ids, task.qrels)
    return Score("retrieval", "ndcg@10", metrics.pop("ndcg@10"), len(query_ids), time.perf_counter() - start, metrics)
