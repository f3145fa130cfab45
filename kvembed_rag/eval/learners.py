"""The learners MTEB puts on top of frozen embeddings, from scikit-learn with MTEB's settings.

Classification: ``LogisticRegression(max_iter=100)`` (C=1, L2, lbfgs) on the raw vectors. Clustering:
``MiniBatchKMeans(n_clusters=labels, batch_size=500, n_init="auto")``, MTEB's clustering evaluator.
"""

from __future__ import annotations

import numpy as np


def fit_predict_logistic(
    train_x: np.ndarray,
    train_y: list[str],
    test_x: np.ndarray,
    *,
    c: float = 1.0,
    max_iter: int = 100,
) -> list[str]:
    """Multinomial logistic regression (scikit-learn, MTEB's ``LogisticRegression(max_iter=100)``)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # MTEB's 100 iterations often stop short: by design
        model.fit(np.asarray(train_x, dtype=np.float64), list(train_y))
    return [str(label) for label in model.predict(np.asarray(test_x, dtype=np.float64))]


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, batch_size: int = 500) -> np.ndarray:
    """Cluster ids ``(n,)`` from scikit-learn's ``MiniBatchKMeans`` (MTEB's clustering protocol), seeded."""
    from sklearn.cluster import MiniBatchKMeans

    points = np.asarray(x, dtype=np.float64)  # (n, d)
    if not 1 <= k <= len(points):
        raise ValueError(f"k must be between 1 and the number of points ({len(points)}); got {k}")
    model = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init="auto", random_state=seed)
    return np.asarray(model.fit_predict(points))
