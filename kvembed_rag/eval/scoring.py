"""Score an encoder on one task. An encoder is anything with ``encode(texts, role) -> (n, dim)`` unit vectors:
a :class:`KVEmbedder`, or a :class:`CachedEncoder` that reads and fills the on-disk cache."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..retrieval.chunking import chunk_text
from .cache import EmbeddingCache, EncodeStats
from .learners import fit_predict_logistic, kmeans
from .metrics import accuracy, macro_f1, retrieval_metrics, spearman, v_measure
from .tasks import BeirTask, LabelledTexts, StsPairs


class Encoder(Protocol):
    def encode(self, texts: list[str], role: str) -> np.ndarray: ...


class CachedEncoder:
    """An embedder behind the evaluation cache, adding up what its encodes cost (tokens, seconds)."""

    def __init__(self, embedder: Any, cache: EmbeddingCache | None = None) -> None:
        self.embedder = embedder
        self.cache = cache or EmbeddingCache(None)
        self.stats = EncodeStats(cached=True)

    def encode(self, texts: list[str], role: str) -> np.ndarray:
        vectors, stats = self.cache.encode(self.embedder, list(texts), role)
        self.stats.add(stats)
        return vectors


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


def evaluate_sts(encoder: Encoder, pairs: StsPairs) -> Score:
    """Spearman of cosine similarity against the gold scores (both sides embedded as documents)."""
    start = time.perf_counter()
    first = encoder.encode(pairs.first, "document")
    second = encoder.encode(pairs.second, "document")
    similarity = (first * second).sum(axis=1)
    return Score("sts", "spearman", spearman(similarity, pairs.scores), len(pairs.scores), time.perf_counter() - start)


def rank_documents(query_vectors: np.ndarray, doc_vectors: np.ndarray, doc_ids: list[str], k: int) -> list[list[str]]:
    """Exact top-k by cosine (vectors are unit-norm), computed in blocks to bound memory."""
    return rank_by_best_chunk(query_vectors, doc_vectors, np.arange(len(doc_ids)), doc_ids, k)


def rank_by_best_chunk(
    query_vectors: np.ndarray, chunk_vectors: np.ndarray, owner: np.ndarray, doc_ids: list[str], k: int
) -> list[list[str]]:
    """Top-k documents per query, each scored by its best chunk. ``owner[i]`` is chunk i's document
    position; chunks of one document are contiguous and every document has at least one."""
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])  # first chunk of each document
    ranked: list[list[str]] = []
    for start in range(0, len(query_vectors), 256):
        scores = query_vectors[start : start + 256] @ chunk_vectors.T  # (q, chunks)
        per_doc = np.maximum.reduceat(scores, starts, axis=1)  # (q, docs)
        top = np.argsort(-per_doc, axis=1, kind="stable")[:, :k]
        ranked.extend([[doc_ids[owner[starts[j]]] for j in row] for row in top])
    return ranked


def score_rankings(
    ranked: list[list[str]], query_ids: list[str], qrels: dict[str, dict[str, float]]
) -> dict[str, float]:
    """Mean nDCG@10, Recall@100 and MRR@10 over the queries (pytrec_eval, as BEIR and MTEB compute them)."""
    per_query = retrieval_metrics(ranked, query_ids, qrels)
    return {name: float(np.mean(values)) if values else 0.0 for name, values in per_query.items()}


def evaluate_retrieval(encoder: Encoder, task: BeirTask, *, doc_vectors: np.ndarray | None = None) -> Score:
    """nDCG@10 (headline), Recall@100 and MRR@10 over the task's judged queries."""
    start = time.perf_counter()
    doc_ids, texts = task.document_texts()
    if doc_vectors is None:
        doc_vectors = encoder.encode(texts, "document")
    query_ids = list(task.queries)
    query_vectors = encoder.encode([task.queries[q] for q in query_ids], "query")
    metrics = score_rankings(rank_documents(query_vectors, doc_vectors, doc_ids, 100), query_ids, task.qrels)
    return Score("retrieval", "ndcg@10", metrics.pop("ndcg@10"), len(query_ids), time.perf_counter() - start, metrics)


def evaluate_long_retrieval(encoder: Encoder, embedder: Any, task: BeirTask, *, long_docs: str = "chunk") -> Score:
    """Retrieval over long documents at ``embedder.max_length``: documents that fit are embedded whole;
    longer ones are cut into overlapping titled chunks and scored by their best chunk (``long_docs="chunk"``)
    or truncated to their head (``"truncate"``)."""
    if long_docs not in ("chunk", "truncate"):
        raise ValueError(f"long_docs must be 'chunk' or 'truncate'; got {long_docs!r}")
    if long_docs == "truncate":
        score = evaluate_retrieval(encoder, task)
        score.task = "loco"
        return score
    start = time.perf_counter()
    doc_ids = list(task.corpus)
    texts: list[str] = []
    owner: list[int] = []
    for position, (title, text) in enumerate(task.corpus.values()):
        pieces = chunk_text(embedder, text, title=title or None)
        texts.extend(piece.text for piece in pieces)
        owner.extend([position] * len(pieces))
    chunk_vectors = encoder.encode(texts, "document")
    query_ids = list(task.queries)
    query_vectors = encoder.encode([task.queries[q] for q in query_ids], "query")
    ranked = rank_by_best_chunk(query_vectors, chunk_vectors, np.asarray(owner), doc_ids, 100)
    metrics = score_rankings(ranked, query_ids, task.qrels)
    metrics["chunks"] = float(len(texts))
    return Score("loco", "ndcg@10", metrics.pop("ndcg@10"), len(query_ids), time.perf_counter() - start, metrics)


def standardize_features(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-scores per dimension with the *training* set's mean and standard deviation (test never leaks in)."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6  # (d,), (d,)
    return (train_x - mean) / std, (test_x - mean) / std


def evaluate_classification(
    encoder: Encoder, train: LabelledTexts, test: LabelledTexts, *, standardize: bool = False
) -> Score:
    """Accuracy (headline) and macro-F1 of a logistic regression fitted on the training embeddings.

    MTEB fits the regression on the raw vectors; ``standardize`` z-scores them first, which removes the
    penalty that a regularised model pays on strongly anisotropic vectors (all cosines near 1).
    """
    start = time.perf_counter()
    train_x = encoder.encode(train.texts, "document")  # (n, d)
    test_x = encoder.encode(test.texts, "document")  # (m, d)
    if standardize:
        train_x, test_x = standardize_features(train_x, test_x)
    predicted = fit_predict_logistic(train_x, train.labels, test_x)
    extra = {"macro_f1": macro_f1(predicted, test.labels)}
    if standardize:
        extra["standardized"] = 1.0
    return Score(
        "classification", "accuracy", accuracy(predicted, test.labels), len(test.labels),
        time.perf_counter() - start, extra,
    )  # fmt: skip


def evaluate_clustering(encoder: Encoder, data: LabelledTexts, *, seed: int = 0) -> Score:
    """V-measure of k-means with k = the number of distinct labels (fixed seed)."""
    start = time.perf_counter()
    vectors = encoder.encode(data.texts, "document")
    clusters = kmeans(vectors, len(set(data.labels)), seed=seed)
    return Score(
        "clustering", "v_measure", v_measure(clusters, data.labels), len(data.labels), time.perf_counter() - start
    )
