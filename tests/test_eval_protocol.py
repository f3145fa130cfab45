"""Our scorers follow MTEB's and BEIR's protocol: the same library calls on the same inputs give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

pytrec_eval = pytest.importorskip("pytrec_eval")
sklearn = pytest.importorskip("sklearn")

from kvembed_rag.eval.learners import fit_predict_logistic, kmeans  # noqa: E402
from kvembed_rag.eval.metrics import accuracy, macro_f1, spearman, v_measure  # noqa: E402
from kvembed_rag.eval.scoring import rank_documents, score_rankings  # noqa: E402


def test_retrieval_equals_beir_evaluate_on_the_same_run() -> None:
    """BEIR's ``EvaluateRetrieval.evaluate``: pytrec_eval over the run's scores, ndcg_cut / recall at k."""
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(60)]
    doc_vectors = rng.normal(size=(60, 16)).astype(np.float32)
    doc_vectors /= np.linalg.norm(doc_vectors, axis=1, keepdims=True)
    queries = [f"q{i}" for i in range(12)]
    query_vectors = doc_vectors[rng.choice(60, 12)] + 0.5 * rng.normal(size=(12, 16)).astype(np.float32)
    query_vectors /= np.linalg.norm(query_vectors, axis=1, keepdims=True)
    qrels = {q: {docs[j]: int(rng.integers(1, 3)) for j in rng.choice(60, 3, replace=False)} for q in queries}
    ranked = rank_documents(query_vectors, doc_vectors, docs, 100)
    ours = score_rankings(ranked, queries, qrels)
    # BEIR: the run holds each query's top-100 documents with their cosine scores
    scores = query_vectors @ doc_vectors.T
    run = {q: {docs[j]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]} for i, q in enumerate(queries)}
    beir = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_100"}).evaluate(run)
    assert ours["ndcg@10"] == pytest.approx(np.mean([beir[q]["ndcg_cut_10"] for q in queries]), abs=1e-12)
    assert ours["recall@100"] == pytest.approx(np.mean([beir[q]["recall_100"] for q in queries]), abs=1e-12)
    # MRR@10 as MTEB computes it: reciprocal rank of the first relevant document in the top 10
    mrr = []
    for i, q in enumerate(queries):
        top = [docs[j] for j in np.argsort(-scores[i])[:10]]
        mrr.append(next((1 / (r + 1) for r, d in enumerate(top) if qrels[q].get(d, 0) > 0), 0.0))
    assert ours["mrr@10"] == pytest.approx(np.mean(mrr), abs=1e-12)


def test_classification_and_clustering_are_mteb_s_learners() -> None:
    """MTEB: ``LogisticRegression(max_iter=100)`` on raw vectors, accuracy and macro-F1; clustering by
    ``MiniBatchKMeans(batch_size=500, n_init="auto")`` scored with V-measure."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, v_measure_score

    rng = np.random.default_rng(1)
    centres = 4 * rng.normal(size=(4, 8))
    labels = np.repeat(["a", "b", "c", "d"], 30)
    points = centres[np.repeat(np.arange(4), 30)] + 0.8 * rng.normal(size=(120, 8))
    train, test = np.arange(120) % 2 == 0, np.arange(120) % 2 == 1
    predicted = fit_predict_logistic(points[train], list(labels[train]), points[test])
    reference = LogisticRegression(max_iter=100).fit(points[train], labels[train]).predict(points[test])
    assert predicted == list(reference)
    assert accuracy(predicted, labels[test]) == pytest.approx(float((reference == labels[test]).mean()))
    assert macro_f1(predicted, labels[test]) == pytest.approx(f1_score(labels[test], reference, average="macro"))
    clusters = kmeans(points, 4, seed=0)
    expected = MiniBatchKMeans(n_clusters=4, batch_size=500, n_init="auto", random_state=0).fit_predict(points)
    assert v_measure(clusters, labels) == pytest.approx(v_measure_score(labels, expected))
    assert v_measure(clusters, labels) > 0.8  # well-separated blobs are found


def test_spearman_is_scipy_s() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=50), rng.integers(0, 5, size=50).astype(float)  # ties in y
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0  # constant input: no ranking (scipy says NaN)
